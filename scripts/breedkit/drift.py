"""Drift of live traffic from a model version's baseline: the measures and their verdicts.

The baseline (``baseline.json``, written by ``evaluate.py`` from the valid split and registered
with the version) holds what the model did on data like its training data: how often it
predicted each class, its top-1 confidences, and the input images' statistics
(``capture.image_stats``). A window of captured traffic is summed up the same way
(``Window``), and ``compare`` says how far apart they are:

- predicted classes: the population stability index (PSI, on proportions with half a count added
  to every class) and a chi-square statistic whose p-value is simulated (multinomial draws from
  the pooled proportions): with a hundred classes and a few hundred requests most classes are
  rare, where the chi-square distribution does not hold. The same draws give the PSI that chance
  alone produces at this window's size (with 133 classes, about 0.5 for a few hundred images:
  most of a raw PSI is sampling noise); its excess over that is what is judged and published,
  so windows of different sizes compare. Drift when p < alpha and the excess >= its threshold:
  the p-value guards against noise in small windows, the excess against trivial shifts in
  large ones.
- top-1 confidence and each input statistic: the two-sample Kolmogorov-Smirnov test. Drift when
  p < alpha and the KS distance D >= its threshold.
- ``alpha`` is the family's: each of the eight tests (classes, confidence, six input statistics)
  runs at alpha / 8 (Bonferroni), so a run of valid-like traffic raises a false verdict with
  probability at most alpha.
- the share of low-confidence predictions (top-1 below a threshold) against the baseline's, the
  error rate, and the share of images smaller than the model's input (upsampled).

Memory does not grow with the window: class counts are exact, confidences and image statistics
are uniform samples (reservoirs) of at most ``MAX_SAMPLE`` values, and an image is decoded only
when it enters the sample.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np

from breedkit.capture import STATS, Event, image_stats, predictions, request_images

BASELINE_FORMAT = 1
MAX_SAMPLE = 10_000
SIMULATIONS = 1_000
TESTS = 2 + len(STATS)  # classes, confidence, each input statistic: alpha is shared by them


@dataclass
class Thresholds:
    alpha: float = 0.01  # of the family of tests: each runs at alpha / TESTS
    psi: float = 0.2  # class distribution: 0.1 is a moderate shift, 0.25 a large one
    ks: float = 0.1  # confidence and input statistics: the KS distance
    low_confidence: float = 0.5  # a prediction whose top-1 probability is below this
    low_confidence_margin: float = 0.1  # verdict when the share exceeds the baseline's by this
    max_error_rate: float = 0.05
    min_images: int = 30  # fewer images in the window: no verdicts

    def check(self) -> str | None:
        for name in ("alpha", "psi", "ks", "low_confidence", "low_confidence_margin",
                     "max_error_rate"):
            value = getattr(self, name)
            if not 0 < value <= (10 if name == "psi" else 1):
                return f"{name} must be in (0, {10 if name == 'psi' else 1}], got {value}"
        if self.min_images < 1:
            return f"min_images must be at least 1, got {self.min_images}"
        return None


def _sample(values, limit: int = MAX_SAMPLE, seed: int = 0) -> list:
    values = list(values)
    if len(values) > limit:
        values = random.Random(seed).sample(values, limit)
    return values


def make_baseline(class_names: list[str], probs: np.ndarray, stats: list[dict],
                  model_input_size: int, split: str) -> dict:
    """The baseline of a version: its predictions on ``split`` (probabilities, one row per
    image) and those images' statistics."""
    predicted = probs.argmax(axis=1)
    counts = np.bincount(predicted, minlength=len(class_names))
    confidences = probs.max(axis=1)
    return {"format": BASELINE_FORMAT, "split": split, "images": int(len(probs)),
            "class_names": list(class_names), "model_input_size": int(model_input_size),
            "predicted_counts": [int(c) for c in counts],
            "top1_confidence": [round(float(c), 6) for c in _sample(confidences)],  # as served
            "inputs": {name: [round(s[name], 5) for s in _sample(stats)] for name in STATS}}


def baseline_problem(doc) -> str | None:
    """What makes ``doc`` unusable as a baseline, or None."""
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
        return f"not a baseline of format {BASELINE_FORMAT} (evaluate.py writes one)"
    names = doc.get("class_names")
    if not isinstance(names, list) or not names or \
            len(doc.get("predicted_counts") or []) != len(names):
        return "class_names and predicted_counts missing or of different lengths"
    if not doc.get("top1_confidence"):
        return "no top1_confidence values"
    if not isinstance(doc.get("inputs"), dict):
        return "no input statistics"
    return None


class Reservoir:
    """A uniform sample of at most ``size`` items of a stream (Algorithm R); ``offer`` makes the
    item only when it enters the sample."""

    def __init__(self, size: int, seed: int):
        self.size, self.seen, self.slots, self.rng = size, 0, [], random.Random(seed)

    def offer(self, make) -> None:
        """``make()`` may give None (an image that does not decode): the slot holds that, so
        the sample stays uniform over the stream; ``items`` leaves it out."""
        self.seen += 1
        if len(self.slots) < self.size:
            self.slots.append(make())
            return
        slot = self.rng.randrange(self.seen)
        if slot < self.size:
            self.slots[slot] = make()

    @property
    def items(self) -> list:
        return [item for item in self.slots if item is not None]


class Window:
    """Captured traffic summed up: requests, errors, predictions and sampled image
    statistics."""

    def __init__(self, n_classes: int, model_input_size: int, sample: int = MAX_SAMPLE,
                 seed: int = 0):
        self.requests = self.errors = self.images = self.unreadable_sampled = 0
        self.small_images = 0
        self.statuses: dict[int, int] = {}
        self.counts = np.zeros(n_classes, dtype=np.int64)
        self.confidences = Reservoir(sample, seed)
        self.stats = Reservoir(sample, seed + 1)
        self.model_input_size = model_input_size
        self.first = self.last = None

    def add(self, event: Event) -> None:
        self.requests += 1
        self.first = min(self.first or event.when, event.when)
        self.last = max(self.last or event.when, event.when)
        answered, status = predictions(event.output)
        if answered is None:
            self.errors += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            return
        blobs = []  # the request's images, decoded only if one of them enters the sample

        def blob(i: int) -> bytes | None:
            if not blobs:
                blobs.append(request_images(event.body, event.content_type))
            return blobs[0][i] if i < len(blobs[0]) else None

        for i, (index, probability) in enumerate(answered):
            self.images += 1
            if 0 <= index < len(self.counts):
                self.counts[index] += 1
            self.confidences.offer(lambda p=probability: p)
            self.stats.offer(lambda i=i: self._stats(blob(i)))

    def _stats(self, blob: bytes | None) -> dict | None:
        stats = image_stats(blob) if blob else None
        if stats is None:
            self.unreadable_sampled += 1
        return stats


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two count vectors (half a count added to each cell)."""
    e = (expected + 0.5) / (expected.sum() + 0.5 * len(expected))
    a = (actual + 0.5) / (actual.sum() + 0.5 * len(actual))
    return float(np.sum((a - e) * np.log(a / e)))


def _chi2(table: np.ndarray) -> float:
    """Pearson's chi-square statistic of a 2 x K table of counts."""
    totals = table.sum(axis=1, keepdims=True)
    expected = totals * table.sum(axis=0, keepdims=True) / table.sum()
    keep = expected > 0
    return float((((table - expected) ** 2)[keep] / expected[keep]).sum())


def class_test(baseline_counts: np.ndarray, window_counts: np.ndarray,
               simulations: int = SIMULATIONS, seed: int = 0) -> tuple[float, float, float]:
    """(chi-square statistic, its p-value by simulation, the mean PSI of the simulated draws:
    what chance alone gives at these sample sizes) of two samples of class counts."""
    table = np.vstack([baseline_counts, window_counts]).astype(np.float64)
    seen = table.sum(axis=0) > 0
    if seen.sum() < 2:
        return 0.0, 1.0, 0.0
    observed = _chi2(table[:, seen])
    pooled = table.sum(axis=0) / table.sum()
    rng = np.random.default_rng(seed)
    n_base, n_window = int(table[0].sum()), int(table[1].sum())
    exceed, chance = 0, 0.0
    for _ in range(simulations):
        base, window = rng.multinomial(n_base, pooled), rng.multinomial(n_window, pooled)
        draw = np.vstack([base, window]).astype(np.float64)
        exceed += _chi2(draw[:, seen]) >= observed - 1e-9
        chance += psi(base, window)
    return observed, (1 + exceed) / (1 + simulations), chance / simulations


def ks_test(reference, sample) -> tuple[float, float]:
    from scipy.stats import ks_2samp

    result = ks_2samp(np.asarray(reference, dtype=np.float64),
                      np.asarray(sample, dtype=np.float64))
    return float(result.statistic), float(result.pvalue)


def _rounded(value, digits: int = 4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def compare(baseline: dict, window: Window, t: Thresholds) -> dict:
    """The measures and verdicts of ``window`` against ``baseline`` (verdicts are None when the
    window holds fewer than ``t.min_images`` images)."""
    enough = window.images >= t.min_images
    alpha = t.alpha / TESTS
    base_counts = np.asarray(baseline["predicted_counts"], dtype=np.int64)
    base_conf = np.asarray(baseline["top1_confidence"], dtype=np.float64)
    report = {"requests": window.requests, "images": window.images,
              "errors": window.errors, "error_statuses": {str(k): v for k, v in
                                                          sorted(window.statuses.items())},
              "error_rate": _rounded(window.errors / window.requests) if window.requests else None,
              "enough_traffic": enough, "thresholds": asdict(t)}
    conf = np.asarray(window.confidences.items, dtype=np.float64)
    base_low = float((base_conf < t.low_confidence).mean())
    low = float((conf < t.low_confidence).mean()) if len(conf) else None
    report["low_confidence"] = {"threshold": t.low_confidence, "share": _rounded(low),
                                "baseline_share": _rounded(base_low)}
    report["class_distribution"] = _class_drift(base_counts, window.counts, baseline, t, alpha,
                                                enough)
    report["confidence"] = _ks_drift(base_conf, conf, alpha, t.ks, enough)
    rows = window.stats.items
    report["inputs"] = {name: _ks_drift(np.asarray(baseline["inputs"].get(name, [])),
                                        np.asarray([r[name] for r in rows]),
                                        alpha, t.ks, enough)
                        for name in STATS}
    report["image_size"] = _sizes(rows, window, baseline.get("model_input_size", 0))
    verdicts = {
        "class_drift": report["class_distribution"]["drift"],
        "confidence_drift": report["confidence"]["drift"],
        "input_drift": (any(v["drift"] for v in report["inputs"].values()) if enough else None),
        "low_confidence": (low - base_low > t.low_confidence_margin) if enough and
        low is not None else None,
        "error_rate": (report["error_rate"] > t.max_error_rate)
        if window.requests >= t.min_images else None,
    }
    report["verdicts"] = verdicts
    report["drift"] = bool(verdicts["class_drift"] or verdicts["confidence_drift"] or
                           verdicts["input_drift"])
    return report


def _class_drift(base_counts, counts, baseline: dict, t: Thresholds, alpha: float,
                 enough: bool) -> dict:
    names = baseline["class_names"]
    share = counts / counts.sum() if counts.sum() else np.zeros(len(counts))
    base_share = base_counts / max(1, base_counts.sum())
    moved = np.argsort(-np.abs(share - base_share))[:5]
    out = {"psi": None, "psi_chance": None, "psi_excess": None, "chi2": None, "p": None,
           "drift": None,
           "most_changed": [{"class": names[i], "share": _rounded(share[i]),
                             "baseline_share": _rounded(base_share[i])}
                            for i in moved if counts.sum()]}
    if counts.sum() == 0:
        return out
    value = psi(base_counts, counts)
    chi2, p, chance = class_test(base_counts, counts)
    excess = max(0.0, value - chance)
    out.update(psi=_rounded(value), psi_chance=_rounded(chance), psi_excess=_rounded(excess),
               chi2=_rounded(chi2, 2), p=_rounded(p, 5))
    out["drift"] = bool(p < alpha and excess >= t.psi) if enough else None
    return out


def _ks_drift(reference: np.ndarray, sample: np.ndarray, alpha: float, threshold: float,
              enough: bool) -> dict:
    out = {"ks": None, "p": None, "mean": _rounded(sample.mean()) if len(sample) else None,
           "baseline_mean": _rounded(reference.mean()) if len(reference) else None,
           "drift": None}
    if len(sample) == 0 or len(reference) == 0:
        return out
    d, p = ks_test(reference, sample)
    out.update(ks=_rounded(d), p=_rounded(p, 6))
    out["drift"] = bool(p < alpha and d >= threshold) if enough else None
    return out


def _sizes(rows: list[dict], window: Window, model_input_size: int) -> dict:
    if not rows:
        return {"median_width": None, "median_height": None, "smaller_than_model_input": None,
                "unreadable_sampled_images": window.unreadable_sampled}
    shorter = np.array([min(r["width"], r["height"]) for r in rows])
    return {"median_width": int(np.median([r["width"] for r in rows])),
            "median_height": int(np.median([r["height"] for r in rows])),
            "smaller_than_model_input": _rounded((shorter < model_input_size).mean())
            if model_input_size else None,
            "model_input_size": model_input_size,
            "unreadable_sampled_images": window.unreadable_sampled}
