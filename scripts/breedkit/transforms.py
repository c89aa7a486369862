"""Image transforms, defined once for training, evaluation and inference.

Transforms work on ``uint8`` CHW tensors and produce ``uint8`` tensors: conversion to float
and ImageNet normalization happen inside the model (``model.Classifier``), on the device, in one
batched operation. Data loading workers therefore move 4x fewer bytes and do no float math.
"""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size(image_size: int, ratio: float = 256 / 224) -> int:
    """Shorter side before the center crop: ``ratio`` times the crop (by default ImageNet's
    classic 256 -> 224; torchvision's V2 weights use 232 -> 224)."""
    return int(round(image_size * ratio))


def stored_size(preprocess_size: int, crop: int, eval_crop: int = 0) -> int:
    """The shorter side preprocess.py stores images at: ``preprocess_size``, or with 0 the
    evaluation's resize of the larger crop (256 for 224: the classic 256/224, which also
    covers the V2 weights' 232/224)."""
    return preprocess_size or resize_size(max(crop, eval_crop or crop))


def size_problem(preprocess_size: int, crop: int, eval_crop: int = 0) -> str:
    """Why images stored at ``preprocess_size`` cannot give these crops without upsampling
    ('' when they can): every image would be enlarged, which adds no detail."""
    largest = max(crop, eval_crop or crop)
    if preprocess_size and preprocess_size < largest:
        which = "evaluation crop EvalImageSize" if largest != crop else "training crop ImageSize"
        return (f"PreprocessImageSize {preprocess_size} is smaller than the {which}"
                f" {largest}: every image would be upsampled. Pass PreprocessImageSize >= "
                f"{largest} (about 1.15x the crop: {resize_size(largest)}), or 0 to derive it")
    return ""


def _mode(interpolation: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(interpolation)


def train_transform(image_size: int, min_scale: float = 0.25, hflip: bool = True,
                    interpolation: str = "bilinear"):
    """Random-resized crop and horizontal flip, the standard fine-tuning augmentation.

    Turn ``hflip`` off for classes that mirroring changes (digits, text, road signs).
    ``interpolation``: the resampling of the weights' own transforms (``model.interpolation``).
    """
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0),
                                  interpolation=_mode(interpolation), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def eval_transform(image_size: int, resize: int | None = None, interpolation: str = "bilinear"):
    """Resize the shorter side (to ``resize``), then center crop: used by validation,
    evaluation and serving."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.Resize(resize or resize_size(image_size), interpolation=_mode(interpolation),
                  antialias=True),
        v2.CenterCrop(image_size),
    ])


def eval_size(config: dict) -> tuple[int, int]:
    """(crop, shorter side) with which a model directory's config says to evaluate and serve.

    ``resize_size`` belongs to the training crop ``image_size``; a larger ``eval_image_size``
    keeps the same proportion. Configs without ``resize_size`` use the 256 -> 224 proportion.
    """
    crop = int(config.get("eval_image_size") or config["image_size"])
    ratio = (config["resize_size"] / config["image_size"] if config.get("resize_size")
             else 256 / 224)
    return crop, resize_size(crop, ratio)


def eval_transform_for(config: dict):
    """The evaluation/serving transform a model directory's config describes (configs from
    before ``interpolation`` was recorded resized bilinearly)."""
    crop, resize = eval_size(config)
    return eval_transform(crop, resize, config.get("interpolation", "bilinear"))
