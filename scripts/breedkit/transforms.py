"""Image transforms, defined once for training, evaluation and inference.

Transforms work on ``uint8`` CHW tensors and produce ``uint8`` tensors: conversion to float
and ImageNet normalization happen inside the model (``model.Classifier``), on the device, in one
batched operation. Data loading workers therefore move 4x fewer bytes and do no float math.
"""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size(image_size: int) -> int:
    """Shorter side before the center crop, in ImageNet's 256 -> 224 proportion."""
    return int(round(image_size * 256 / 224))


def train_transform(image_size: int, min_scale: float = 0.25, hflip: bool = True):
    """Random-resized crop and horizontal flip, the standard fine-tuning augmentation.

    Turn ``hflip`` off for classes that mirroring changes (digits, text, road signs).
    """
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def eval_transform(image_size: int):
    """Resize the shorter side, then center crop: used by validation, evaluation and serving."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.Resize(resize_size(image_size), antialias=True),
        v2.CenterCrop(image_size),
    ])
