"""Image-folder data sets (``<root>/<class>/<file>``) and their data loaders."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .contract import UserError
from .images import IMAGE_EXTENSIONS, ImageDecodeError, decode_tensor


def list_image_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """Class names (sorted subfolders, as torchvision's ImageFolder) and (path, class) pairs."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist or is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = []
    for name in classes:
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith("."):
                    samples.append((os.path.join(dirpath, filename), name))
    if not samples:
        raise UserError(f"no images found in {root}: expected <class>/<image> files "
                        f"({', '.join(IMAGE_EXTENSIONS)}); run preprocess.py on the raw data")
    return classes, samples


class ImageFolderDataset(Dataset):
    """Decodes with ``images.decode_tensor`` and labels by a fixed class list."""

    def __init__(self, root, class_names: list[str] | None = None, transform=None):
        found, samples = list_image_folder(root)
        self.root = str(root)
        self.class_names = list(class_names) if class_names is not None else found
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted(set(found) - set(index))
        if unknown:
            raise UserError(f"{root} has classes the model does not know: "
                            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; "
                            f"every class must also be present in the training data")
        self.samples = [(path, index[name]) for path, name in samples]
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        i, sample_seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[i]
        try:
            with open(path, "rb") as fh:
                image = decode_tensor(fh.read())
        except (ImageDecodeError, OSError) as exc:
            raise UserError(f"cannot read image {path}: {exc}. Remove it, or run preprocess.py, "
                            f"which skips and reports unreadable files") from None
        if self.transform is not None:
            if sample_seed is not None:
                torch.manual_seed(sample_seed)
            image = self.transform(image)
        return image, label


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, workers: int, seed: int = 0,
                rank: int = 0, world_size: int = 1, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """A loader that gives each process its shard; with one process, the plain shuffled order.

    The same DistributedSampler is used for 1 and N processes, so one-process results do not
    depend on whether the job was started by torchrun. Shuffling and augmentation are seeded by
    (seed, epoch, image) alone: call ``loader.sampler.set_epoch(epoch)`` each epoch. Results
    then do not depend on the number of workers, and a resumed run replays the same epochs.
    """
    from torch.utils.data.distributed import DistributedSampler

    if shuffle:
        sampler = SeededSampler(DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                   shuffle=True, seed=seed, drop_last=drop_last),
                                seed)
    else:  # evaluation: contiguous, unpadded shards so every image counts exactly once
        sampler = _ShardSampler(len(dataset), rank, world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      drop_last=drop_last, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


class _ShardSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:  # same interface as DistributedSampler
        pass


class SeededSampler(torch.utils.data.Sampler):
    """Yields ``(index, sample_seed)``: the dataset seeds its random transform with it."""

    def __init__(self, base, seed: int):
        self.base = base
        self.seed = seed
        self.epoch = 0

    def __iter__(self):
        for index in self.base:
            yield index, ((self.seed * 1_000_003 + self.epoch) * 1_000_033 + index) % (1 << 62)

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)
