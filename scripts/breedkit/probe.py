"""Linear probing on cached features, and starting a fine-tune from the probed head (LP-FT,
Kumar et al., ICLR 2022: fine-tuning from a probed head distorts the pretrained features less
than from a random one, and beats it in and out of distribution).

A linear-probe trial (``train.py --mode linear-probe``) trains only the new head, an
``nn.Linear(dim, classes)`` identical to the network's head, on the Features step's arrays:
seconds where a fine-tuning trial takes minutes to hours. It prints the same epoch lines (so the
tuning job's metrics and objective are unchanged) and writes the head as its model::

    head.pt     state_dict of the head (weight, bias); torch.load(..., weights_only=True)
    head.json   the features' signature, class names, validation accuracy, hyperparameters

TrainFinal receives the best trial's model (``SM_CHANNEL_HEAD``: a folder or its model.tar.gz)
and, when it is a probed head of the same backbone and classes, starts from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

from .contract import UserError
from .model import load_state

log = logging.getLogger("breedkit.probe")

HEAD_FILE = "head.pt"
HEAD_META = "head.json"


def train_probe(args, tracker=None) -> dict:
    """Train the head on ``args.features_dir``; returns the training summary."""
    import numpy as np
    import torch
    import torch.nn as nn

    from . import features
    from .logformat import format_epoch_line
    from .training import cosine_schedule

    feats = features.load(args.features_dir, {"arch": args.arch, "pretrained": args.pretrained,
                                             "image_size": args.image_size})
    torch.manual_seed(args.seed)
    views, n, dim = feats.train.shape
    classes = len(feats.class_names)
    x_train = torch.from_numpy(feats.train.reshape(views * n, dim))  # float16, as stored
    y_train = torch.from_numpy(np.tile(feats.train_labels, views)).long()
    x_valid = torch.from_numpy(feats.valid[0]).float()
    y_valid = torch.from_numpy(feats.valid_labels).long()
    log.info("linear probe: %d training images x %d view(s), %d validation images, %d classes, "
             "feature dim %d", n, views, len(y_valid), classes, dim)

    head = nn.Linear(dim, classes)
    optimizer = torch.optim.AdamW([{"params": [head.weight], "weight_decay": args.weight_decay},
                                   {"params": [head.bias], "weight_decay": 0.0}], lr=args.lr)
    steps = max(1, math.ceil(len(y_train) / args.batch_size))
    scheduler = cosine_schedule(optimizer, steps * args.epochs)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    generator = torch.Generator().manual_seed(args.seed)
    best = {"accuracy": -1.0, "epoch": 0, "state": None}
    history = []
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        order = torch.randperm(len(y_train), generator=generator)
        loss_sum, correct = 0.0, 0
        head.train()
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            logits = head(x_train[batch].float())
            loss = criterion(logits, y_train[batch])
            if not torch.isfinite(loss):
                raise UserError(f"the probe's loss became {loss.item()} at epoch {epoch}: lower "
                                f"--lr (now {args.lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(batch)
            correct += int((logits.argmax(1) == y_train[batch]).sum())
        head.eval()
        with torch.no_grad():
            logits = head(x_valid)
            valid_loss = float(criterion(logits, y_valid)) if len(y_valid) else 0.0
            valid_correct = int((logits.argmax(1) == y_valid).sum())
        valid_accuracy = valid_correct / max(1, len(y_valid))
        if valid_accuracy > best["accuracy"]:
            best.update(accuracy=valid_accuracy, epoch=epoch,
                        state={k: v.detach().clone() for k, v in head.state_dict().items()})
        seconds = time.perf_counter() - epoch_start
        metrics = {"train_loss": loss_sum / len(y_train), "train_accuracy": correct / len(y_train),
                   "valid_loss": valid_loss, "valid_accuracy": valid_accuracy,
                   "valid_best_accuracy": best["accuracy"], "lr": lr, "epoch_seconds": seconds,
                   "images_per_second": len(y_train) / max(seconds, 1e-9)}
        history.append({"epoch": epoch, **metrics})
        print(format_epoch_line(epoch, metrics), flush=True)
        if tracker is not None:
            tracker.epoch(epoch, metrics)

    model_dir = Path(args.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(best["state"], model_dir / HEAD_FILE)
    summary = {"mode": "linear-probe", "best_epoch": best["epoch"],
               "valid_accuracy": best["accuracy"], "epochs_run": len(history),
               "train_seconds": time.perf_counter() - started, "feature_views": views,
               "torch_version": torch.__version__}
    (model_dir / HEAD_META).write_text(json.dumps({
        "signature": feats.signature, "class_names": feats.class_names, "feature_dim": dim,
        **summary}, indent=2) + "\n")
    os.makedirs(args.output_data_dir, exist_ok=True)
    Path(args.output_data_dir, "history.json").write_text(json.dumps(history, indent=2))
    Path(args.output_data_dir, "training_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"best_epoch={best['epoch']} valid_best_accuracy={best['accuracy']:.4f}", flush=True)
    return summary


def _head_folder(path: str, scratch: str) -> Path | None:
    """The folder holding head.json: ``path`` itself, or its model.tar.gz extracted."""
    folder = Path(path)
    if (folder / HEAD_META).is_file():
        return folder
    archives = sorted(folder.glob("*.tar.gz")) if folder.is_dir() else (
        [folder] if folder.is_file() else [])
    if len(archives) != 1:
        return None
    from .model import extract_archive

    out = extract_archive(archives[0], scratch)
    return out if (out / HEAD_META).is_file() else None


def load_head(path: str, model, class_names: list[str], expected: dict) -> dict | None:
    """Put the probed head found at ``path`` into ``model.head``; returns its head.json, or
    None when ``path`` holds no probed head (the best trial of --tuning-mode fine-tune is a whole
    model: TrainFinal then starts from a new head, as that mode always has). A head of another
    backbone, size or class list is a UserError."""
    from . import features

    if not path or not os.path.exists(path):
        return None
    with tempfile.TemporaryDirectory() as scratch:
        folder = _head_folder(path, scratch)
        if folder is None:
            return None
        try:
            meta = json.loads((folder / HEAD_META).read_text())
            state = load_state(folder / HEAD_FILE)
        except (OSError, ValueError, RuntimeError, UserError) as exc:
            raise UserError(f"cannot read the probed head in {path}: {exc}") from None
    diff = features.mismatch(meta.get("signature", {}), expected,
                             keys=(*features.CHECKED, "seed", "backbone_checksum"))
    if diff:
        raise UserError(f"the probed head in {path} was trained on features of another "
                        f"backbone: {diff}. Run Features and HPTuning again with these settings.")
    if meta.get("class_names") != list(class_names):
        raise UserError(f"the probed head in {path} knows other classes than the training data "
                        f"({len(meta.get('class_names') or [])} vs {len(class_names)}); run "
                        f"Features and HPTuning again on this data")
    try:
        model.head.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"the probed head in {path} does not fit the network: {exc}") from None
    return meta
