"""The training log's metric lines and the regexes that read them: one definition for all.

train.py prints one line per epoch::

    epoch=3 train_loss=0.9100 train_accuracy=0.7012 valid_loss=1.0200 valid_accuracy=0.7712 \
valid_best_accuracy=0.7712 lr=0.000812 epoch_seconds=41.2 images_per_second=162.3

SageMaker training and tuning jobs read metrics from the log with ``METRIC_DEFINITIONS``; the
local engine reads its trials' logs with the same regexes (``parse_metrics``). The tuning
objective is ``valid:best_accuracy``: the best validation accuracy so far, of the raw weights or
their moving average (``valid_ema_accuracy``), which is the accuracy of the weights the job keeps, and it is reported every epoch so early stopping can use it.
"""

from __future__ import annotations

import re

# (metric name seen by SageMaker, key printed in the log)
_METRICS = (
    ("train:loss", "train_loss"),
    ("train:accuracy", "train_accuracy"),
    ("valid:loss", "valid_loss"),
    ("valid:accuracy", "valid_accuracy"),
    ("valid:best_accuracy", "valid_best_accuracy"),
    ("valid:ema_accuracy", "valid_ema_accuracy"),
    ("train:images_per_second", "images_per_second"),
)
_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

METRIC_DEFINITIONS = [
    {"Name": name, "Regex": rf"(?:^|\s){key}={_NUMBER}"} for name, key in _METRICS
]
OBJECTIVE_METRIC = "valid:best_accuracy"
OBJECTIVE_TYPE = "Maximize"

EPOCH_LINE_KEYS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy",
                   "valid_ema_accuracy", "valid_best_accuracy", "lr", "epoch_seconds",
                   "images_per_second")
_DECIMALS = {"lr": 6, "epoch_seconds": 1, "images_per_second": 1}


def format_epoch_line(epoch: int, metrics: dict) -> str:
    """The per-epoch line, keys in a fixed order, numbers in plain decimal notation."""
    parts = [f"epoch={epoch}"]
    for key in EPOCH_LINE_KEYS:
        if key in metrics:
            parts.append(f"{key}={metrics[key]:.{_DECIMALS.get(key, 4)}f}")
    return " ".join(parts)


def parse_metrics(log_text: str) -> dict[str, list[float]]:
    """Every value of every metric in a log, in order, as SageMaker would extract them."""
    found: dict[str, list[float]] = {}
    for definition in METRIC_DEFINITIONS:
        pattern = re.compile(definition["Regex"], re.MULTILINE)
        values = [float(m.group(1)) for m in pattern.finditer(log_text)]
        if values:
            found[definition["Name"]] = values
    return found
