"""A split's metrics in SageMaker Model Registry's multiclass format, and the confusion plot.

``evaluation.json``::

    {"multiclass_classification_metrics": {
        "accuracy": {"value": 0.84, "standard_deviation": 0.012},
        "weighted_f1": {...}, "weighted_precision": {...}, "weighted_recall": {...},
        "macro_f1": {...}, "top_5_accuracy": {...}, "log_loss": {...},
        "confusion_matrix": {"<true class>": {"<predicted class>": count, ...}, ...}},
     "per_class": {"<class>": {"accuracy": ..., "precision": ..., "recall": ..., "f1": ...,
                               "support": n}},
     "num_images": n, "class_names": [...]}

Standard deviations are bootstrap estimates (resampling the test images), as Clarify reports them;
``null`` when no bootstrap rounds were asked for (NaN is not JSON).
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_ROUNDS = 200
TOP_K = 5


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    n = n_classes
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, ...]:
    """Precision, recall, F1 and support of each class (0 where undefined, as sklearn's
    zero_division=0)."""
    cm = cm.astype(np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    zeros = np.zeros(len(tp))
    precision = np.divide(tp, predicted, out=zeros.copy(), where=predicted > 0)
    recall = np.divide(tp, support, out=zeros.copy(), where=support > 0)
    denominator = support + predicted  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=zeros.copy(), where=denominator > 0)
    return precision, recall, f1, support


def scores(y_true, y_pred, probs, n_classes: int, k: int = TOP_K) -> dict:
    """The scalar metrics, in numpy: the same values as scikit-learn's accuracy, weighted and
    macro F1/precision/recall (zero_division=0), log loss and top-k accuracy
    (tests/test_evaluate.py checks it), without their input validation, which made the
    bootstrap's 200 resamples take 8 s of a 16 s step on 30 images."""
    precision, recall, f1, support = _per_class(confusion(y_true, y_pred, n_classes))
    weights = support / support.sum()
    rows = np.arange(len(y_true))
    eps = np.finfo(probs.dtype).eps
    true_probs = probs[rows, y_true]
    higher = (probs > true_probs[:, None]).sum(1)
    return {"accuracy": float(np.mean(y_true == y_pred)),
            "weighted_f1": float(f1 @ weights), "weighted_precision": float(precision @ weights),
            "weighted_recall": float(recall @ weights), "macro_f1": float(f1.mean()),
            "log_loss": float(-np.mean(np.log(np.clip(true_probs, eps, 1 - eps)))),
            f"top_{k}_accuracy": float(np.mean(higher < k)) if k < n_classes else 1.0}


def compute_metrics(y_true, probs, class_names, seed: int = 0,
                    rounds: int = BOOTSTRAP_ROUNDS) -> dict:
    """Every metric of evaluation.json from true labels and predicted probabilities."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    y_pred = probs.argmax(axis=1)
    n = len(class_names)
    point = scores(y_true, y_pred, probs, n)
    rng = np.random.default_rng(seed)
    samples = {name: [] for name in point}
    for _ in range(rounds):
        idx = rng.integers(0, len(y_true), len(y_true))
        for name, value in scores(y_true[idx], y_pred[idx], probs[idx], n).items():
            samples[name].append(value)
    metrics = {name: {"value": float(value),
                      "standard_deviation": float(np.std(samples[name])) if rounds else None}
               for name, value in point.items()}
    matrix = confusion(y_true, y_pred, n)
    metrics["confusion_matrix"] = {
        class_names[i]: {class_names[j]: int(matrix[i, j]) for j in range(n)} for i in range(n)}
    precision, recall, f1, support = _per_class(matrix)
    per_class = {
        name: {"accuracy": float(recall[i]) if support[i] else None,
               "precision": float(precision[i]), "recall": float(recall[i]),
               "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)}
    return {"multiclass_classification_metrics": metrics, "per_class": per_class,
            "num_images": int(len(y_true)), "class_names": list(class_names)}


def plot_confusion_matrix(report: dict, path: str, labels: list[str] | None = None) -> None:
    """Row-normalized confusion matrix as a PNG; numbers drawn only when classes are few."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["class_names"]
    cm = report["multiclass_classification_metrics"]["confusion_matrix"]
    counts = np.array([[cm[t][p] for p in names] for t in names], dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(names)
    side = min(40.0, max(6.0, 0.22 * n + 3))
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    ticks = labels or names
    font = 8 if n <= 40 else max(3, int(500 / n))
    ax.set_xticks(range(n), ticks, rotation=90, fontsize=font)
    ax.set_yticks(range(n), ticks, fontsize=font)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if normalized[i, j] > 0.5 else "black")
    accuracy = report["multiclass_classification_metrics"]["accuracy"]["value"]
    ax.set_title(f"Confusion matrix (rows: true class, normalized) - accuracy {accuracy:.4f}")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
