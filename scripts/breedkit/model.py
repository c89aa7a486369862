"""The classifier: a torchvision ResNet with a new head, and its self-contained model directory.

Model directory layout (what ``model.tar.gz`` holds, as SageMaker's PyTorch serving expects):

    model.pth           state_dict of the torchvision ResNet (``fc`` resized to the classes);
                        loadable with ``torch.load(..., weights_only=True)``
    model_config.json   architecture, image size, normalization, class names, training summary
    classes.json        class names in label order
    code/inference.py   the serving handlers, with ``code/breedkit/`` that they import
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tarfile
from pathlib import Path

import torch
import torch.nn as nn

from . import archives
from .archs import ARCHS, FINE_TUNE_CHOICES
from .contract import UserError
from .transforms import IMAGENET_MEAN, IMAGENET_STD, resize_size

WEIGHTS_FILE = "model.pth"
CONFIG_FILE = "model_config.json"
CLASSES_FILE = "classes.json"
CODE_DIR = "code"
MODEL_FORMAT_VERSION = 1


class Classifier(nn.Module):
    """ResNet that takes ``uint8`` (or 0..255 float) NCHW images and normalizes them itself.

    Normalizing inside the model keeps training, evaluation and serving identical and lets the
    data pipeline stay in ``uint8``. Input is converted to channels_last, which is faster for
    convolutions on both CPU and GPU.
    """

    def __init__(self, backbone, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        self.frozen: list = []

    def forward(self, images):
        x = images.to(self.mean.device, non_blocking=True).float()
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:  # frozen layers keep their BatchNorm statistics
            module.eval()
        return self


def _pretrained_state_dict(arch: str):
    """torchvision's ImageNet weights, or a UserError that says how to proceed offline."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, timeouts, hash mismatch, HTTP errors
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        raise UserError(
            f"could not obtain the pretrained ImageNet weights for {arch} from {weights.url} "
            f"({type(exc).__name__}: {exc}). Connect to the internet, or copy that file to "
            f"{cache} (set TORCH_HOME to move the cache), or train from scratch with "
            f"--pretrained false.") from None


def build_model(arch: str, num_classes: int, pretrained: bool = False,
                fine_tune: str = "all") -> Classifier:
    """A ResNet with ``num_classes`` outputs; ``fine_tune`` selects the trainable layers."""
    from torchvision import models

    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if fine_tune not in FINE_TUNE_CHOICES:
        raise UserError(f"unknown --fine-tune {fine_tune!r}; choose one of "
                        f"{', '.join(FINE_TUNE_CHOICES)}")
    backbone = getattr(models, arch)(weights=None)
    if pretrained:
        backbone.load_state_dict(_pretrained_state_dict(arch))
    backbone.fc = nn.Linear(backbone.fc.in_features, num_classes)
    model = Classifier(backbone)
    trainable = {
        "all": None,
        "layer3": ("layer3", "layer4", "fc"),
        "layer4": ("layer4", "fc"),
        "head": ("fc",),
    }[fine_tune]
    if trainable is not None:
        for name, child in backbone.named_children():
            if name not in trainable:
                child.requires_grad_(False)
                model.frozen.append(child)
    return model


class FlipTTA(nn.Module):
    """Test-time augmentation: the model's prediction averaged with that of the mirrored image.

    Returns the log of the averaged probabilities, so ``softmax`` of the output is the average
    of the two views' probabilities and callers treat it as logits. Twice the compute.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images):
        logits = self.model(torch.cat([images, images.flip(-1)]))
        probs = logits.float().softmax(1)
        n = images.shape[0]
        return ((probs[:n] + probs[n:]) / 2).log()


def preprocessing(arch: str, pretrained: bool, image_size: int) -> int:
    """The shorter side to resize to before the center crop of ``image_size``, in the
    proportion the ImageNet weights were evaluated with (torchvision's weight metadata: 232 for
    the V2 weights' 224 crop, 256 for V1); 256/224 for a model trained from scratch."""
    ratio = 256 / 224
    if pretrained:
        from torchvision.models import get_model_weights

        preset = get_model_weights(arch).DEFAULT.transforms()
        ratio = preset.resize_size[0] / preset.crop_size[0]
    return resize_size(image_size, ratio)


def parameter_groups(model, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0):
    """Optimizer groups: the new head (``fc``) at ``lr`` and the rest of the network at
    ``lr * backbone_lr_mult`` (pretrained features need smaller steps than a random head), each
    with weights decayed and biases/BatchNorm parameters not (the usual fine-tuning practice).
    The head's decayed weights come first: that group's rate is the one logged."""
    head = {id(p) for p in model.backbone.fc.parameters()}
    groups = {(True, True): [], (True, False): [], (False, True): [], (False, False): []}
    for param in model.parameters():
        if param.requires_grad:
            groups[(id(param) in head, param.ndim > 1)].append(param)
    return [{"params": params, "lr": lr if in_head else lr * backbone_lr_mult,
             "weight_decay": weight_decay if decayed else 0.0}
            for (in_head, decayed), params in groups.items() if params]


def display_label(class_name: str) -> str:
    """``001.Affenpinscher`` -> ``Affenpinscher``; ``American_water_spaniel`` -> spaces."""
    head, sep, tail = class_name.partition(".")
    name = tail if sep and head.isdigit() and tail else class_name
    return name.replace("_", " ")


def save_model_dir(model_dir: str | os.PathLike, model: Classifier, *, arch: str,
                   class_names: list[str], image_size: int, resize: int | None = None,
                   eval_image_size: int | None = None, extra: dict | None = None) -> Path:
    """Write weights, config and the serving code so the directory is self-contained.

    ``resize`` is the shorter side for the ``image_size`` crop (see ``preprocessing``);
    ``eval_image_size`` a larger crop for evaluation and serving, in the same proportion.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    torch.save(state, model_dir / WEIGHTS_FILE)
    config = {
        "format_version": MODEL_FORMAT_VERSION,
        "arch": arch,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "image_size": image_size,
        "resize_size": resize or resize_size(image_size),
        "eval_image_size": eval_image_size or image_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "input": "uint8 RGB NCHW, normalized inside the model",
    }
    config.update(extra or {})
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (model_dir / CLASSES_FILE).write_text(json.dumps(list(class_names), indent=2) + "\n")
    copy_serving_code(model_dir / CODE_DIR)
    return model_dir


def copy_serving_code(code_dir: Path) -> None:
    """Copy inference.py and this package, which is all inference.py imports."""
    package_dir = Path(__file__).resolve().parent
    scripts_dir = package_dir.parent
    if code_dir.exists():
        shutil.rmtree(code_dir)
    code_dir.mkdir(parents=True)
    shutil.copy2(scripts_dir / "inference.py", code_dir / "inference.py")
    shutil.copytree(package_dir, code_dir / package_dir.name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def read_config(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: {model_dir} is not a model directory written by "
                        f"train.py (expected {WEIGHTS_FILE} and {CONFIG_FILE})") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if config.get("arch") not in ARCHS or not config.get("class_names"):
        raise UserError(f"{path} does not describe a model (arch/class_names missing)")
    return config


def flip_tta_by_default(config: dict) -> bool:
    """Horizontal-flip TTA for models trained with random flips (``--hflip true``), whose
    predictions should not depend on mirroring; never for models trained without (digits,
    text). Measured on the README's digits model: +1.7 points valid, +2.2 points test."""
    return bool(config.get("training", {}).get("hyperparameters", {}).get("hflip", False))


def load_state(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)``. A file holding more than tensors (a pickle
    that could run code) is a UserError of ours: torch's own message advises loading it with
    ``weights_only=False``, which is exactly what must not happen to a file from elsewhere."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:  # not a pickle at all: damaged, or not a weights file
            raise UserError(f"cannot read {path}: it is not a weights file written by "
                            f"torch.save (damaged, or something else). Use a model.tar.gz "
                            f"written by a training job") from None
        raise UserError(f"{path} holds more than tensors (it names {found.group(1)}): it was "
                        f"not written by our training job and is not loaded, since loading it "
                        f"could run code. Use a model.tar.gz written by a training job"
                        ) from None


def load_model(model_dir: str | os.PathLike, device=None,
               tta_hflip: bool | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the classifier from a model directory (never downloads weights), wrapped in
    FlipTTA when ``tta_hflip`` (None: ``flip_tta_by_default``). Evaluation and serving both
    load models here, so they predict alike."""
    config = read_config(model_dir)
    model = build_model(config["arch"], len(config["class_names"]), pretrained=False)
    weights = Path(model_dir) / WEIGHTS_FILE
    try:
        state = load_state(weights)
        model.backbone.load_state_dict(state)
    except FileNotFoundError:
        raise UserError(f"{weights} not found in the model directory") from None
    except (RuntimeError, OSError, ValueError) as exc:
        raise UserError(f"cannot load weights from {weights}: {exc}") from None
    model.eval()
    if device is not None:
        model.to(device)
    if tta_hflip is None:
        tta_hflip = flip_tta_by_default(config)
    return (FlipTTA(model).eval() if tta_hflip else model), config


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a model.tar.gz safely: no absolute paths, no '..', no links outside, no devices."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            archives.extract(tar, dest)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"cannot extract {archive}: {exc}. Pass a model directory or the "
                        f"model.tar.gz written by a training job.") from None
    return dest
