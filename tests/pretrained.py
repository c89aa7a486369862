"""A backbone pretrained here, planted where torchvision looks for its ImageNet weights.

torchvision loads ``weights.get_state_dict()`` from ``$TORCH_HOME/hub/checkpoints/<the file name
of the weights' URL>`` when that file exists (the hash is checked only on download). So the
pipeline's default path, ``Pretrained=true``, runs offline on a network pretrained on a
generated *source* task: coloured shapes of other colours than the test data's classes (red
squares, green discs, blue bars), 1000 outputs as ImageNet's head has. Made once per machine
and code version, under ``~/.cache/dogbreed-tests/`` (``$DOGBREED_TEST_CACHE`` moves it).
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

SOURCE_COLOURS = {"yellow": (220, 200, 40), "cyan": (40, 200, 210), "magenta": (200, 50, 200),
                  "orange": (240, 140, 30), "white": (245, 245, 245), "black": (15, 15, 15)}
SOURCE_SHAPES = ("rectangle", "ellipse", "bar")
IMAGE_SIZE = 32
EPOCHS = 4
PER_CLASS = 60


def cache_root() -> Path:
    base = os.environ.get("DOGBREED_TEST_CACHE") or Path.home() / ".cache" / "dogbreed-tests"
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return Path(base) / f"torch-home-{digest}"


def torch_home(arch: str = "resnet18") -> Path:
    """A TORCH_HOME whose hub cache holds ``arch``'s DEFAULT weights, pretrained here."""
    from torchvision.models import get_model_weights

    home = cache_root()
    target = home / "hub" / "checkpoints" / os.path.basename(get_model_weights(arch).DEFAULT.url)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".partial-{os.getpid()}")
        import torch

        torch.save(pretrain(arch), partial)
        os.replace(partial, target)  # (two test processes: the last one wins, both whole)
    return home


def source_images(seed: int = 1):
    """(uint8 CHW tensor, class index) pairs of the source task."""
    import numpy as np
    import torch

    from conftest import draw_example

    rng = random.Random(seed)
    styles = [(colour, shape) for colour in SOURCE_COLOURS.values() for shape in SOURCE_SHAPES]
    data = []
    for label, style in enumerate(styles):
        for _ in range(PER_CLASS):
            image = draw_example(style, rng, (IMAGE_SIZE + 8, IMAGE_SIZE))
            array = np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE)), dtype=np.uint8)
            data.append((torch.from_numpy(array.copy()).permute(2, 0, 1), label))
    return data, len(styles)


def pretrain(arch: str) -> dict:
    """The state dict of torchvision's ``arch`` (1000 outputs) trained on the source task."""
    import torch
    from torchvision import models

    from breedkit.transforms import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    data, classes = source_images()
    network = getattr(models, arch)(weights=None)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=0.05)
    images = torch.stack([image for image, _ in data])
    labels = torch.tensor([label for _, label in data])
    network.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(data))
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            x = (images[batch].float() - mean) / std
            flip = torch.rand(len(batch)) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = torch.nn.functional.cross_entropy(network(x)[:, :classes], labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return network.state_dict()
