"""Run the (pretrained) backbone once over train and valid and cache the pooled features
(SageMaker Processing contract): the Features step.

Inputs:  --train-dir, --valid-dir   <class>/<image> folders (Preprocess's outputs)
Output:  --output-dir               features.json and float16 arrays (breedkit.features)

Each training image gives ``--views`` feature vectors: the center crop validation uses, its
mirror image (with ``--hflip true``, as train.py's flips), then random-resized crops (train.py's
augmentation, flipped at random with ``--hflip true``), so the linear-probe trials still see
augmented images, and never a mirror image of a data set that must not be mirrored. The image
is decoded once for all its views. The backbone is built exactly as train.py builds it (same
seed), so TrainFinal can start from the probed head.

With ``--tuning-mode fine-tune`` the tuning trials train on images and need no features: the
step writes a features.json that says so and stops.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from breedkit.contract import (UserError, cpu_count, parse_args, run_main,  # noqa: E402
                               setup_logging, str2bool)
from breedkit.archs import ARCHS, size_problem  # noqa: E402

log = logging.getLogger("features")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-dir", default="/opt/ml/processing/train")
    p.add_argument("--valid-dir", default="/opt/ml/processing/valid")
    p.add_argument("--output-dir", default="/opt/ml/processing/features")
    p.add_argument("--arch", default="resnet50", choices=ARCHS)
    p.add_argument("--pretrained", type=str2bool, default=True)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--views", type=int, default=4, help="feature vectors per training image")
    p.add_argument("--hflip", type=str2bool, default=True,
                   help="as train.py's --hflip: a mirror view and flipped crops (false for "
                        "digits, text, signs)")
    p.add_argument("--seed", type=int, default=42, help="as train.py's --seed")
    p.add_argument("--min-scale", type=float, default=0.25, help="as train.py's --min-scale")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=int, default=-1, help="-1: automatic")
    p.add_argument("--device", default="auto")
    p.add_argument("--tuning-mode", default="linear-probe", choices=("linear-probe", "fine-tune"))
    return p


class Views:
    """Each image of a folder as a [views, 3, H, W] uint8 stack (decoded once)."""

    def __init__(self, dataset, center, mirror: bool, crops: int, crop_transform, seed: int):
        self.dataset, self.center, self.mirror = dataset, center, mirror
        self.crops, self.crop_transform, self.seed = crops, crop_transform, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        import torch

        image, label = self.dataset[index]
        views = [self.center(image)]
        if self.mirror:
            views.append(views[0].flip(-1))
        for view in range(self.crops):
            torch.manual_seed((self.seed * 1_000_003 + view) * 1_000_033 + index)
            views.append(self.crop_transform(image))
        return torch.stack(views), label


def extract(model, dataset, batch_size: int, workers: int, device, amp_dtype):
    """float16 [views, images, dim] features and int32 labels, in the dataset's order."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from breedkit.training import autocast

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    chunks, labels = [], []
    with torch.inference_mode():
        for images, targets in loader:
            b, v = images.shape[:2]
            with autocast(device, amp_dtype):
                out = model(images.flatten(0, 1).to(device))
            chunks.append(out.float().view(b, v, -1).transpose(0, 1).cpu().half())
            labels.append(targets)
    return (torch.cat(chunks, 1).numpy(),
            torch.cat(labels).numpy().astype(np.int32))


def main(argv=None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()
    from breedkit import features

    if size_problem(args.arch, args.image_size):
        raise UserError(size_problem(args.arch, args.image_size))
    if not 1 <= args.views <= features.MAX_VIEWS:
        raise UserError(f"--views must be between 1 and {features.MAX_VIEWS}, got {args.views}")

    if args.tuning_mode == "fine-tune":  # the trials train on images: nothing to extract
        os.makedirs(args.output_dir, exist_ok=True)
        features.write_skipped(args.output_dir, "--tuning-mode fine-tune")
        log.info("--tuning-mode fine-tune: no features needed")
        return 0

    import torch
    import torch.nn as nn

    from breedkit.data import ImageFolderDataset
    from breedkit.model import build_model, interpolation, preprocessing
    from breedkit.training import choose_precision
    from breedkit.transforms import eval_transform_for, train_transform

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    started = time.perf_counter()
    train = ImageFolderDataset(args.train_dir)
    if len(train.class_names) < 2:
        raise UserError(f"{args.train_dir} has {len(train.class_names)} class folder(s); a "
                        f"classifier needs at least 2")
    valid = ImageFolderDataset(args.valid_dir, train.class_names)
    torch.manual_seed(args.seed)  # as train.py: the same backbone, random or pretrained
    model = build_model(args.arch, len(train.class_names), args.pretrained,
                        image_size=args.image_size)
    sig = features.signature(args.arch, args.pretrained, args.image_size, args.seed,
                             features.backbone_checksum(model))
    model.set_head(nn.Identity())
    model.eval().to(device, memory_format=torch.channels_last)
    resampling = interpolation(args.arch, args.pretrained)
    center = eval_transform_for({"image_size": args.image_size, "resize_size": preprocessing(
        args.arch, args.pretrained, args.image_size), "interpolation": resampling})
    crops = train_transform(args.image_size, args.min_scale, hflip=args.hflip,
                            interpolation=resampling)
    amp_dtype = choose_precision("auto", device)
    workers = args.workers if args.workers >= 0 else (0 if cpu_count() <= 2 else
                                                       min(8, cpu_count() - 1))
    arrays = {}
    for split, dataset, views in (("train", train, args.views), ("valid", valid, 1)):
        split_start = time.perf_counter()
        mirror = args.hflip and views >= 2
        stacked = Views(dataset, center, mirror, views - 1 - mirror, crops, args.seed)
        arrays[split], arrays[f"{split}_labels"] = extract(model, stacked, args.batch_size,
                                                           workers, device, amp_dtype)
        seconds = time.perf_counter() - split_start
        log.info("%s: %d images x %d view(s) in %.1fs (%.1f images/s)", split, len(dataset),
                 views, seconds, len(dataset) * views / max(seconds, 1e-9))
    features.write(args.output_dir, sig, train.class_names, arrays, args.views, extra={
        "precision": "fp32" if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
        "hflip": args.hflip,
        "device": str(device), "seconds": round(time.perf_counter() - started, 1)})
    print(f"features: {arrays['train'].shape[1]} training images x {args.views} view(s), "
          f"{arrays['valid'].shape[1]} validation images, dim {arrays['train'].shape[-1]}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
