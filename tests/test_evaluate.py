"""evaluate.py on the session's trained model, and the metric computations themselves."""

from __future__ import annotations

import csv
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder, read_json, run_script

from breedkit.evaluation import compute_metrics


def make_tarball(model_dir, path):
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted(model_dir.iterdir()):
            tar.add(item, arcname=item.name)
    return path


def test_evaluation_report_in_model_registry_format(trained, tmp_path):
    # the model arrives as model.tar.gz inside a folder, as a ProcessingInput delivers it
    model_input = tmp_path / "model"
    model_input.mkdir()
    make_tarball(trained["model"], model_input / "model.tar.gz")
    out = tmp_path / "evaluation"
    proc = run_script("evaluate.py", "--model-dir", model_input, "--test-dir",
                      trained["data"] / "test", "--output-dir", out)
    assert proc.returncode == 0, proc.stderr
    report = read_json(out / "evaluation.json")
    metrics = report["multiclass_classification_metrics"]
    for name in ("accuracy", "weighted_f1", "weighted_precision", "weighted_recall", "macro_f1",
                 "top_5_accuracy", "log_loss"):
        assert set(metrics[name]) == {"value", "standard_deviation"}, name
        assert metrics[name]["standard_deviation"] >= 0
    assert 0.7 <= metrics["accuracy"]["value"] <= 1.0  # a learnable task; chance is 0.33
    assert metrics["top_5_accuracy"]["value"] == 1.0  # 3 classes
    names = report["class_names"]
    matrix = metrics["confusion_matrix"]
    assert sum(sum(row.values()) for row in matrix.values()) == report["num_images"] == 30
    assert report["split"] == "test"
    assert report["tta"] == "hflip"  # trained with random flips: mirrored views are averaged
    assert sum(matrix[c][c] for c in names) / 30 == pytest.approx(metrics["accuracy"]["value"])
    assert set(report["per_class"]) == set(names)
    assert all(report["per_class"][c]["support"] == 10 for c in names)
    with Image.open(out / "confusion_matrix.png") as png:
        assert png.format == "PNG" and png.width >= 300
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30
    correct = sum(r["true_class"] == r["predicted_class"] for r in rows)
    assert correct / 30 == pytest.approx(metrics["accuracy"]["value"])
    assert f"test_accuracy={metrics['accuracy']['value']:.4f}" in proc.stdout


def test_validation_report_scores_the_kept_weights_on_the_valid_split(trained, tmp_path):
    """CheckAccuracy's figure: the weights train.py kept, on the valid split it chose them by."""
    out = tmp_path / "evaluation"
    proc = run_script("evaluate.py", "--model-dir", trained["model"], "--test-dir",
                      trained["data"] / "test", "--valid-dir", trained["data"] / "valid",
                      "--output-dir", out)
    assert proc.returncode == 0, proc.stderr
    validation, test = read_json(out / "validation.json"), read_json(out / "evaluation.json")
    assert validation["split"] == "valid" and test["split"] == "test"
    assert validation["num_images"] == 30 and test["num_images"] == 30
    kept = read_json(trained["output"] / "training_summary.json")["valid_accuracy"]
    value = validation["multiclass_classification_metrics"]["accuracy"]["value"]
    assert value == pytest.approx(kept, abs=1 / 30 + 1e-9)  # train.py may score in bf16
    assert "valid_accuracy=" in proc.stdout and "test_accuracy=" in proc.stdout
    with open(out / "predictions.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 30  # the test split's predictions only


def test_evaluate_errors_are_clear(trained, tmp_path):
    proc = run_script("evaluate.py", "--model-dir", tmp_path / "missing", "--test-dir",
                      trained["data"] / "test", "--output-dir", tmp_path / "out")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_script("evaluate.py", "--model-dir", tmp_path / "empty", "--test-dir",
                      trained["data"] / "test", "--output-dir", tmp_path / "out")
    assert proc.returncode == 2 and "not the output of train.py" in proc.stderr
    other = make_image_folder(tmp_path / "other", 2)
    (other / "999.Unknown_breed").mkdir()
    Image.new("RGB", (40, 40)).save(other / "999.Unknown_breed/x.jpg")
    proc = run_script("evaluate.py", "--model-dir", trained["model"], "--test-dir", other,
                      "--output-dir", tmp_path / "out")
    assert proc.returncode == 2 and "999.Unknown_breed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_model_archive_with_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    proc = run_script("evaluate.py", "--model-dir", archive, "--test-dir", tmp_path,
                      "--output-dir", tmp_path / "out")
    assert proc.returncode == 2 and "cannot extract" in proc.stderr
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_metrics_on_a_known_case():
    names = ["a", "b", "c"]
    y_true = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.1, .6, .3], [.1, .1, .8],
                      [.3, .3, .4]])
    report = compute_metrics(y_true, probs, names, rounds=50)
    m = report["multiclass_classification_metrics"]
    assert m["accuracy"]["value"] == pytest.approx(5 / 6)
    # class a: precision 1, recall .5; b: precision 2/3, recall 1; c: 1, 1
    f1_a, f1_b, f1_c = 2 / 3, 0.8, 1.0
    assert m["weighted_f1"]["value"] == pytest.approx((f1_a + f1_b + f1_c) / 3)
    assert m["confusion_matrix"]["a"] == {"a": 1, "b": 1, "c": 0}
    assert report["per_class"]["a"]["accuracy"] == pytest.approx(0.5)
    assert m["accuracy"]["standard_deviation"] > 0
    perfect = compute_metrics(y_true, np.eye(3)[y_true], names, rounds=20)
    assert perfect["multiclass_classification_metrics"]["accuracy"] == {
        "value": 1.0, "standard_deviation": 0.0}


def sklearn_scores(y_true, y_pred, probs, labels, k) -> dict:
    from sklearn.metrics import (accuracy_score, f1_score, log_loss, precision_score,
                                 recall_score, top_k_accuracy_score)

    weighted = {"labels": labels, "average": "weighted", "zero_division": 0}
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "weighted_f1": f1_score(y_true, y_pred, **weighted),
        "weighted_precision": precision_score(y_true, y_pred, **weighted),
        "weighted_recall": recall_score(y_true, y_pred, **weighted),
        "macro_f1": f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
        "log_loss": log_loss(y_true, probs, labels=labels),
        f"top_{k}_accuracy": (top_k_accuracy_score(y_true, probs, k=k, labels=labels)
                              if k < len(labels) else 1.0),
    }


def test_scores_are_sklearns_scores():
    """Our numpy metrics equal scikit-learn's, with a class missing from the labels too."""
    from sklearn.metrics import precision_recall_fscore_support

    from breedkit.evaluation import _per_class, confusion, scores

    rng = np.random.default_rng(1)
    for classes, images in ((3, 30), (10, 50), (133, 400)):
        y_true = rng.integers(0, classes - 1, images)  # the last class is never the true one
        probs = rng.random((images, classes)) ** 4
        probs /= probs.sum(1, keepdims=True)
        y_pred = probs.argmax(1)
        labels = list(range(classes))
        assert scores(y_true, y_pred, probs, classes, 5) == pytest.approx(
            sklearn_scores(y_true, y_pred, probs, labels, 5))
        ours = _per_class(confusion(y_true, y_pred, classes))
        theirs = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        for a, b in zip(ours, theirs):
            assert a == pytest.approx(b)
