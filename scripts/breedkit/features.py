"""Cached backbone features: what the Features step writes and linear-probe trials read.

A features folder::

    features.json      signature, classes, views, and each array's shape, dtype and sha256
    train.npy          float16 [views, images, dim]: view 0 the center crop, view 1 its mirror,
                       views 2.. random-resized crops (the training augmentation)
    train_labels.npy   int32 [images]
    valid.npy          float16 [1, images, dim] (the center crop, as validation sees it)
    valid_labels.npy   int32 [images]

The signature (architecture, pretrained or not, crop size, seed, and a checksum of the
backbone's weights) travels with the features into the probed head (breedkit.probe): features
of another backbone or size are refused, and TrainFinal only starts from a head whose backbone
it really has. ``features.json`` is written last, so a folder without it is unfinished.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .contract import UserError

if TYPE_CHECKING:  # numpy is imported where arrays are read or written: pipelines.spec reads
    import numpy as np  # MAX_VIEWS from here, and every command reads pipelines.spec

FORMAT_VERSION = 1
MAX_VIEWS = 16  # every view is one more pass of the backbone over the training set
META_FILE = "features.json"
SPLITS = ("train", "valid")
CHECKED = ("arch", "pretrained", "image_size")  # what a trial's own arguments must match


def backbone_checksum(model) -> float:
    """A float that changes with any weight of the classifier's backbone (its head left out)."""
    import torch

    head = model.family.head + "."
    with torch.no_grad():
        total = 0.0
        for name, tensor in model.backbone.state_dict().items():
            if not name.startswith(head) and tensor.is_floating_point():
                total += float(tensor.double().abs().sum())
    return round(total, 6)


def signature(arch: str, pretrained: bool, image_size: int, seed: int, checksum: float) -> dict:
    return {"arch": arch, "pretrained": bool(pretrained), "image_size": int(image_size),
            "seed": int(seed), "backbone_checksum": checksum}


def mismatch(found: dict, expected: dict, keys=CHECKED) -> str:
    """'' when ``found`` agrees with ``expected`` on ``keys``, else what differs."""
    diffs = [f"{k} {found.get(k)!r} (expected {expected[k]!r})" for k in keys
             if found.get(k) != expected[k]]
    return ", ".join(diffs)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write(out_dir: str | os.PathLike, sig: dict, class_names: list[str],
          arrays: dict[str, np.ndarray], views: int, extra: dict | None = None) -> Path:
    """Save the arrays (``<split>`` and ``<split>_labels``), then features.json."""
    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # unfinished until written again
    files = {}
    for name, array in arrays.items():
        path = out / f"{name}.npy"
        tmp = path.with_suffix(".npy.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(tmp, path)
        files[name] = {"file": path.name, "shape": list(array.shape), "dtype": str(array.dtype),
                       "sha256": _sha256(path)}
    meta = {"format_version": FORMAT_VERSION, "signature": sig, "class_names": list(class_names),
            "views": views, "feature_dim": int(arrays["train"].shape[-1]), "arrays": files,
            **(extra or {})}
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / META_FILE)
    return out


def write_skipped(out_dir: str | os.PathLike, reason: str) -> None:
    """A features.json that says no features were extracted, and why."""
    path = Path(out_dir) / META_FILE
    path.write_text(json.dumps({"format_version": FORMAT_VERSION, "skipped": reason}) + "\n")


@dataclass
class FeatureSet:
    meta: dict
    train: np.ndarray  # [views, n, dim] float16
    train_labels: np.ndarray
    valid: np.ndarray  # [1, n, dim]
    valid_labels: np.ndarray

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    @property
    def signature(self) -> dict:
        return self.meta["signature"]


def read_meta(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    path = folder / META_FILE
    if not path.is_file():
        raise UserError(f"{folder} holds no {META_FILE}: it is not the output of a finished "
                        f"Features step (scripts/features.py). Run that step first, or use "
                        f"--tuning-mode fine-tune.")
    try:
        meta = json.loads(path.read_text())
        if not meta.get("skipped"):
            meta["signature"], meta["arrays"]["train"]  # noqa: B018 - the keys must be there
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a valid features description ({exc}); re-run the "
                        f"Features step") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has format version {meta.get('format_version')!r}; this code "
                        f"reads version {FORMAT_VERSION}: re-run the Features step")
    return meta


def load(folder: str | os.PathLike, expected: dict | None = None) -> FeatureSet:
    """The cached features, checked: signature (against ``expected``), every file's size and
    sha256, shapes and dtypes. Any problem is a UserError that names the file."""
    import numpy as np

    folder = Path(folder)
    meta = read_meta(folder)
    if meta.get("skipped"):
        raise UserError(f"the Features step in {folder} extracted nothing "
                        f"({meta['skipped']}); linear-probe trials need features: run the "
                        f"pipeline with --tuning-mode linear-probe")
    if expected:
        diff = mismatch(meta["signature"], expected)
        if diff:
            raise UserError(f"the features in {folder} were extracted with another backbone or "
                            f"size: {diff}. Re-run the Features step with this trial's BaseModel, "
                            f"Pretrained and ImageSize.")
    arrays = {}
    for name in ("train", "train_labels", "valid", "valid_labels"):
        info = meta["arrays"].get(name)
        if info is None:
            raise UserError(f"{folder / META_FILE} lists no {name} array; re-run the Features "
                            f"step")
        path = folder / info["file"]
        if not path.is_file():
            raise UserError(f"features file {path} is missing; re-run the Features step")
        if _sha256(path) != info["sha256"]:
            raise UserError(f"features file {path} is truncated or corrupt (its sha256 differs "
                            f"from {META_FILE}'s); re-run the Features step")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read features file {path}: {exc}") from None
        if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
            raise UserError(f"features file {path} has shape {list(array.shape)} {array.dtype}, "
                            f"not {info['shape']} {info['dtype']}; re-run the Features step")
        arrays[name] = array
    n_classes = len(meta["class_names"])
    for split in SPLITS:
        labels = arrays[f"{split}_labels"]
        if arrays[split].ndim != 3 or arrays[split].shape[1] != len(labels) or (
                len(labels) and (labels.min() < 0 or labels.max() >= n_classes)):
            raise UserError(f"features in {folder} are inconsistent ({split}: "
                            f"{arrays[split].shape} for {len(labels)} labels of {n_classes} "
                            f"classes); re-run the Features step")
    return FeatureSet(meta, **arrays)
