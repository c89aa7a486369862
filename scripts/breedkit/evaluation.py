"""A split's metrics in SageMaker Model Registry's multiclass format, and the confusion plot.

``evaluation.json``::

    {"multiclass_classification_metrics": {
        "accuracy": {"value": 0.84, "standard_deviation": 0.012},
        "weighted_f1": {...}, "weighted_precision": {...}, "weighted_recall": {...},
        "macro_f1": {...}, "top_5_accuracy": {...}, "log_loss": {...},
        "confusion_matrix": {"<true class>": {"<predicted class>": count, ...}, ...}},
     "per_class": {"<class>": {"accuracy": ..., "precision": ..., "recall": ..., "f1": ...,
                               "support": n}},
     "num_images": n, "class_names": [...],
     "accuracy_interval_95": [low, high], "balanced_accuracy": ...}

and, when a version is already approved (``evaluate.py --approved-model``), its paired
comparison on the same test images (:func:`paired_comparison`)::

    "comparison": {"approved_version": "3", "accuracy": 0.86, "approved_accuracy": 0.84,
                   "accuracy_delta": 0.02, "delta_interval_95": [-0.004, 0.043],
                   "mcnemar_p": 0.12, "new_right_approved_wrong": 31,
                   "new_wrong_approved_right": 18, "images": 836, "better": true},
    "comparison_summary": "+0.0200 (95% interval -0.0040 to +0.0430; McNemar p=0.12) ...",
    "passes_require_improvement": true

Standard deviations are bootstrap estimates (resampling the test images), as Clarify reports them;
``null`` when no bootstrap rounds were asked for (NaN is not JSON).
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_ROUNDS = 200
INTERVAL_ROUNDS = 1000
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
    low, high = accuracy_interval((y_true == y_pred).astype(np.float64), seed=seed)
    present = support > 0
    return {"multiclass_classification_metrics": metrics, "per_class": per_class,
            "num_images": int(len(y_true)), "class_names": list(class_names),
            "accuracy_interval_95": [low, high],
            "balanced_accuracy": float(recall[present].mean()) if present.any() else None}


def accuracy_interval(correct: np.ndarray, rounds: int = INTERVAL_ROUNDS,
                      seed: int = 0) -> tuple[float, float]:
    """95% bootstrap percentile interval of the mean of ``correct`` (bounded memory: the
    resamples are drawn a block at a time)."""
    return _percentiles(np.asarray(correct, dtype=np.float64), rounds, seed)


def _percentiles(values: np.ndarray, rounds: int, seed: int) -> tuple[float, float]:
    if len(values) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    block = max(1, min(rounds, 2_000_000 // len(values)))
    means = []
    for start in range(0, rounds, block):
        size = min(block, rounds - start)
        means.append(values[rng.integers(0, len(values), (size, len(values)))].mean(axis=1))
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return float(low), float(high)


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: of the images the two models disagree on being right
    about (b one way, c the other), a split this uneven or more under a fair coin."""
    n = b + c
    if n == 0:
        return 1.0
    from math import comb, log, exp

    k = min(b, c)
    tail = sum(comb(n, i) for i in range(k + 1))
    return float(min(1.0, exp(log(2 * tail) - n * log(2))))


def paired_comparison(y_true, new_pred, approved_pred, seed: int = 0,
                      rounds: int = INTERVAL_ROUNDS) -> dict:
    """The new model against the approved one on the same images: the accuracy difference,
    its 95% paired bootstrap interval and McNemar's exact p-value."""
    y_true = np.asarray(y_true)
    new_right = np.asarray(new_pred) == y_true
    old_right = np.asarray(approved_pred) == y_true
    delta = float(new_right.mean() - old_right.mean()) if len(y_true) else 0.0
    low, high = _percentiles(new_right.astype(np.float64) - old_right, rounds, seed)
    b, c = int((new_right & ~old_right).sum()), int((~new_right & old_right).sum())
    return {"accuracy": float(new_right.mean()) if len(y_true) else 0.0,
            "approved_accuracy": float(old_right.mean()) if len(y_true) else 0.0,
            "accuracy_delta": delta, "delta_interval_95": [low, high],
            "mcnemar_p": mcnemar_p(b, c), "new_right_approved_wrong": b,
            "new_wrong_approved_right": c, "images": int(len(y_true)), "better": delta > 0}


def comparison_summary(comparison: dict | None, reason: str = "") -> str:
    """One line for the registry's metadata (at most 256 characters, never empty)."""
    if comparison is None:
        return f"none ({reason or 'no approved version'})"[:256]
    low, high = comparison["delta_interval_95"]
    return (f"{comparison['accuracy_delta']:+.4f} (95% interval {low:+.4f} to {high:+.4f}; "
            f"McNemar p={comparison['mcnemar_p']:.3g}) against version "
            f"{comparison.get('approved_version') or '?'} on {comparison['images']} test "
            f"images")[:256]


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
