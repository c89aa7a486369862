"""report.html, the page the approver looks at: its figures, its Grad-CAM heatmaps, and the page
itself rendered in a real browser (Debian's chromium, headless)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from conftest import ROOT, run_script

from breedkit import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def test_intervals_calibration_and_confused_pairs():
    assert report.wilson(0, 10)[0] == 0.0 and report.wilson(10, 10)[1] == 1.0
    # the interval holds its own estimate: rounding put 0/11's lower bound above 0 and 6/6's
    # upper bound below 1, and the per-class plot's error bars then refused negative lengths
    # (a model with a class it never gets right failed Evaluate)
    for n in range(1, 120):
        for k in (0, 1, n // 2, n - 1, n):
            low, high = report.wilson(k, n)
            assert low <= k / n <= high, (k, n)
    assert report._plots([("never right", 0.0, *report.wilson(0, 11), 11),
                          ("always right", 1.0, *report.wilson(6, 6), 6)], [], 0.0)["per_class"]
    low, high = report.wilson(8, 10)
    assert low == pytest.approx(0.490, abs=1e-3) and high == pytest.approx(0.943, abs=1e-3)
    correct = np.array([1.0] * 80 + [0.0] * 20)
    low, high = report.accuracy_interval(correct)
    assert 0.70 < low < 0.8 < high < 0.9
    # perfectly calibrated bins have no gap; overconfident ones do
    confidence = np.array([0.95] * 100)
    assert report.reliability(confidence, np.array([1.0] * 95 + [0.0] * 5))[1] == \
        pytest.approx(0.0)
    assert report.reliability(confidence, np.array([1.0] * 50 + [0.0] * 50))[1] == \
        pytest.approx(0.45)
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0, 2])
    assert report.confused_pairs(labels, predicted, ["a", "b", "c"]) == [
        ("a", "b", 2, 2 / 3), ("b", "a", 1, 0.5)]


def test_grad_cam_points_at_what_the_prediction_rests_on():
    """A network that scores class 1 by how bright the image is (pooled over the whole image,
    as a ResNet pools): on a dark image with one bright square, the heatmap lies on the square."""
    import torch
    import torch.nn as nn

    class Brightness(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer4 = nn.Conv2d(3, 4, 3, padding=1)
            with torch.no_grad():
                self.layer4.weight.zero_()
                self.layer4.weight[:, :, 1, 1] = 1.0
                self.layer4.bias.zero_()

        def forward(self, x):
            pooled = torch.relu(self.layer4(x.float())).mean(dim=(1, 2, 3))
            return torch.stack([-pooled, pooled], dim=1)

    images = torch.zeros((2, 3, 32, 32), dtype=torch.uint8)
    images[:, :, 4:12, 4:12] = 200
    # wrapped, as the project's Classifier wraps a torchvision ResNet
    heat = report.grad_cam(nn.Sequential(Brightness()), images, [1, 1])
    assert heat.shape == (2, 32, 32) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    assert heat[:, 5:11, 5:11].mean() > 0.9 and heat[:, 16:, 16:].max() < 0.05


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """evaluate.py on a test split whose class folders are rotated (each class's images filed
    under the next class): the model's answers are mostly "wrong", so the gallery is full."""
    out = tmp_path_factory.mktemp("evaluation")
    rotated = tmp_path_factory.mktemp("rotated")
    classes = sorted(p.name for p in (trained["data"] / "test").iterdir())
    for source, target in zip(classes, classes[1:] + classes[:1]):
        shutil.copytree(trained["data"] / "test" / source, rotated / target)
    proc = run_script("evaluate.py", "--model-dir", trained["model"], "--test-dir", rotated,
                      "--output-dir", out, "--bootstrap-rounds", "0")
    assert proc.returncode == 0, proc.stderr
    return out


def test_evaluate_writes_the_report_with_every_section(evaluated):
    page = (evaluated / "report.html").read_text()
    for section in ("overall", "comparison", "per-class", "confused", "calibration", "mistakes"):
        assert f'<section id="{section}">' in page, section
    assert "95% interval" in page and "expected calibration error" in page
    # the two plots and the twelve worst mistakes, each beside its Grad-CAM heatmap
    assert page.count("data:image/png;base64,") == 2 + report.WORST
    assert page.count("<figure>") == report.WORST
    assert "http" not in page.split("<script>")[0].replace("http-equiv", "")  # self-contained


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed here (.ci/run "
                                         "installs it with apt-get; where it cannot, this test "
                                         "cannot run)")
def test_the_report_renders_in_a_real_browser_with_every_image(evaluated, tmp_path):
    page = evaluated / "report.html"
    images = len(re.findall(r"<img ", page.read_text()))
    proc = subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert f'data-images="{images}/{images}"' in dom, (proc.returncode, proc.stderr[-2000:])
    for section in ("overall", "comparison", "per-class", "confused", "calibration", "mistakes"):
        assert f'id="{section}"' in dom
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                    "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("DOGBREED_REPORT_SCREENSHOT"):  # for reviewers: bench/report.png
        shutil.copy(shot, ROOT / "bench" / "report.png")


# --- against the approved version ----------------------------------------------------------------

def test_mcnemar_and_the_paired_interval_are_the_textbook_ones():
    from scipy.stats import binomtest

    from breedkit.evaluation import mcnemar_p, paired_comparison

    for b, c in ((0, 0), (3, 0), (10, 4), (31, 18), (400, 350)):
        expected = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
        assert mcnemar_p(b, c) == pytest.approx(expected, rel=1e-9), (b, c)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 500)
    old = np.where(rng.random(500) < 0.70, labels, (labels + 1) % 5)
    new = np.where(rng.random(500) < 0.80, labels, (labels + 1) % 5)
    c = paired_comparison(labels, new, old)
    assert c["accuracy_delta"] == pytest.approx((new == labels).mean() - (old == labels).mean())
    low, high = c["delta_interval_95"]
    assert low < c["accuracy_delta"] < high and high - low < 0.15
    assert c["new_right_approved_wrong"] - c["new_wrong_approved_right"] == \
        round(c["accuracy_delta"] * 500)
    assert c["better"] and c["mcnemar_p"] < 0.05


def test_evaluate_compares_with_the_approved_version_on_the_same_images(trained, tmp_path):
    """The approved model here is the trained one with its head scrambled (a worse model): the
    new one is better, significantly; against itself, not better; without one, no comparison."""
    import torch

    from breedkit.model import WEIGHTS_FILE

    worse = tmp_path / "approved"
    shutil.copytree(trained["model"], worse)
    state = torch.load(worse / WEIGHTS_FILE, weights_only=True)
    head = [k for k in state if k.endswith("weight")][-1]
    state[head] = state[head].roll(1, 0)  # every class's row moved to another: classes shuffled
    # (a random permutation of 3 rows is the identity one time in six: a flaky test)
    torch.save(state, worse / WEIGHTS_FILE)
    empty = tmp_path / "no-approved-version"
    empty.mkdir()
    (empty / "README.txt").write_text("placeholder")

    def evaluate(approved, name):
        out = tmp_path / name
        proc = run_script("evaluate.py", "--model-dir", trained["model"], "--test-dir",
                          trained["data"] / "test", "--output-dir", out, "--bootstrap-rounds",
                          "0", "--approved-model", approved, "--approved-version", "7")
        assert proc.returncode == 0, proc.stderr
        return json.loads((out / "evaluation.json").read_text()), (out / "report.html").read_text()

    result, page = evaluate(worse, "vs-worse")
    c = result["comparison"]
    assert c["approved_version"] == "7" and c["images"] == result["num_images"]
    assert c["accuracy"] == pytest.approx(
        result["multiclass_classification_metrics"]["accuracy"]["value"])
    assert c["accuracy_delta"] > 0.3 and c["better"] and c["mcnemar_p"] < 0.01
    assert result["passes_require_improvement"] is True
    assert result["comparison_summary"].startswith(f"+{c['accuracy_delta']:.4f}")
    assert "against version 7" in result["comparison_summary"]
    assert '<section id="comparison"><h2>Against the approved version (7)' in page

    result, _ = evaluate(trained["model"], "vs-itself")
    assert result["comparison"]["accuracy_delta"] == 0 and result["comparison"]["mcnemar_p"] == 1
    assert result["passes_require_improvement"] is False  # not better: RequireImprovement stops it

    result, page = evaluate(empty, "vs-none")
    assert result["comparison"] is None and result["passes_require_improvement"] is True
    assert result["comparison_summary"] == "none (no approved version)"
    assert "No approved version to compare with." in page

    # an approved version whose archive is damaged: the new model is still evaluated, and the
    # approver reads why there is no comparison
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    result, page = evaluate(damaged, "vs-damaged")
    assert result["comparison"] is None
    assert result["comparison_summary"].startswith("none (version 7's model cannot be read: ")
    assert "model.tar.gz" in result["comparison_summary"]
    assert "cannot be read" in page
    # a real archive cut short (an interrupted upload): gzip's EOFError, not a failed Evaluate
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w:gz") as tar:
        tar.add(trained["model"], arcname=".")
    (damaged / "model.tar.gz").write_bytes(whole.getvalue()[:len(whole.getvalue()) // 2])
    result, _ = evaluate(damaged, "vs-truncated")
    assert result["comparison"] is None and "cannot be read" in result["comparison_summary"]
    lo, hi = result["accuracy_interval_95"]
    assert lo <= result["multiclass_classification_metrics"]["accuracy"]["value"] <= hi
    assert 0 < result["balanced_accuracy"] <= 1
