"""The classifier: a torchvision backbone (ResNet, ConvNeXt, EfficientNetV2, ViT) with a new
head, and its self-contained model directory.

Model directory layout (what ``model.tar.gz`` holds, as SageMaker's PyTorch serving expects):

    model.pth           state_dict of the torchvision network (its head resized to the classes);
                        loadable with ``torch.load(..., weights_only=True)``
    model_config.json   architecture, image sizes, resampling, normalization, class names,
                        training summary
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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from . import archives
from .archs import ARCHS, FINE_TUNE_CHOICES, VIT_PATCH, backbone, size_problem
from .contract import UserError
from .transforms import IMAGENET_MEAN, IMAGENET_STD, resize_size

WEIGHTS_FILE = "model.pth"
CONFIG_FILE = "model_config.json"
CLASSES_FILE = "classes.json"
CODE_DIR = "code"
MODEL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Family:
    """Where a torchvision family keeps what we replace, freeze and explain."""
    head: str                   # the final nn.Linear, which a new head replaces
    stages: Callable            # backbone -> its stages (lists of module names), first to last
    ends: tuple = ()            # modules between the last stage and the head (trained with it)
    cam: Callable = None        # backbone -> name of the module whose output Grad-CAM weighs
    tokens: bool = False        # that output is [N, 1 + h*w, D] tokens, not [N, C, h, w] maps


def _numbered(prefix: str, backbone) -> list[str]:
    return [f"{prefix}.{name}" for name, _ in backbone.get_submodule(prefix).named_children()]


def _efficientnet_stages(backbone) -> list[list[str]]:
    """stem, 6 or 7 stages, a 1x1 convolution to 1280 channels (part of the last stage)"""
    names = _numbered("features", backbone)
    return [[names[0]]] + [[name] for name in names[1:-2]] + [names[-2:]]


def _vit_stages(backbone) -> list[list[str]]:
    """the patch embedding, then the encoder's blocks in four stages (3 each for ViT-B)"""
    blocks = _numbered("encoder.layers", backbone)
    size = max(1, len(blocks) // 4)
    return [["conv_proj"]] + [blocks[i:i + size] for i in range(0, len(blocks), size)]


FAMILIES = {
    "resnet": Family("fc", lambda b: [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"],
                                      ["layer4"]], cam=lambda b: "layer4"),
    # features: stem, then (downsampling, stage) pairs
    "convnext": Family("classifier.2",
                       lambda b: [["features.0"], ["features.1"], ["features.2", "features.3"],
                                  ["features.4", "features.5"], ["features.6", "features.7"]],
                       ends=("classifier.0",), cam=lambda b: "features.7"),
    "efficientnet": Family("classifier.1", _efficientnet_stages,
                           cam=lambda b: _numbered("features", b)[-1]),
    # the class token reads the patches in the last block, so the patch tokens that leave the
    # last block carry no gradient: Grad-CAM weighs those that enter it
    "vit": Family("heads.head", _vit_stages, ends=("encoder.ln",),
                  cam=lambda b: _numbered("encoder.layers", b)[-2], tokens=True),
}


def family(arch: str) -> Family:
    return FAMILIES[backbone(arch).family]


class Classifier(nn.Module):
    """A torchvision backbone that takes ``uint8`` (or 0..255 float) NCHW images and normalizes
    them itself.

    Normalizing inside the model keeps training, evaluation and serving identical and lets the
    data pipeline stay in ``uint8``. Input is converted to channels_last, which is faster for
    convolutions on both CPU and GPU. ``head`` is the backbone's final ``nn.Linear``.
    """

    def __init__(self, backbone, family: Family, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.backbone = backbone
        self.family = family
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        self.frozen: list = []

    @property
    def head(self) -> nn.Module:
        return self.backbone.get_submodule(self.family.head)

    def set_head(self, module: nn.Module) -> None:
        """Put ``module`` where the backbone's head is (a property setter would not do:
        ``nn.Module`` registers an assigned module as a child of its own)."""
        parent, _, name = self.family.head.rpartition(".")
        setattr(self.backbone.get_submodule(parent) if parent else self.backbone, name, module)

    def forward(self, images):
        x = images.to(self.mean.device, non_blocking=True).float()
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:  # frozen layers keep their BatchNorm statistics
            module.eval()
        return self


def _pretrained_state_dict(arch: str, weights):
    """torchvision's ImageNet weights, or a UserError that says how to proceed offline."""
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, timeouts, hash mismatch, HTTP errors
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        raise UserError(
            f"could not obtain the pretrained ImageNet weights for {arch} from {weights.url} "
            f"({type(exc).__name__}: {exc}). Connect to the internet, or copy that file to "
            f"{cache} (set TORCH_HOME to move the cache), or train from scratch with "
            f"--pretrained false.") from None


def imagenet_weights(arch: str):
    """The torchvision weights enum member that ``--pretrained`` loads for ``arch``."""
    from torchvision.models import get_model_weights

    spec = backbone(arch)
    return get_model_weights(spec.builder)[spec.weights]


def _resize_position_embeddings(state: dict, image_size: int) -> dict:
    """A ViT's pretrained position embeddings interpolated to ``image_size`` (torchvision's
    own bicubic interpolation), so a ViT trains at any crop of whole patches."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    return interpolate_embeddings(image_size, VIT_PATCH, state)


def _freeze_all_but(model: Classifier, trainable: list[str]) -> None:
    """Freeze every parameter outside the ``trainable`` modules; a module wholly frozen keeps
    its normalization statistics (and skips its stochastic depth) in training mode too
    (``Classifier.train``)."""
    def walk(module, prefix):
        for param in module.parameters(recurse=False):  # a ViT's class token, positions
            param.requires_grad_(False)
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if any(full == t or full.startswith(t + ".") for t in trainable):
                continue
            if any(t.startswith(full + ".") for t in trainable):
                walk(child, full + ".")
            elif any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
                child.requires_grad_(False)
                model.frozen.append(child)
            # a module with no state (EfficientNetV2's dropout before the head) keeps its mode
    walk(model.backbone, "")


def trainable_modules(model: Classifier, fine_tune: str) -> list[str] | None:
    """The modules ``--fine-tune`` trains, or None for all: ``layer4`` the last stage and the
    head, ``layer3`` the last two, ``head`` the head alone. A ResNet's stages are its layers;
    a ViT-B's are its blocks, three at a time."""
    if fine_tune == "all":
        return None
    fam = model.family
    count = {"head": 0, "layer4": 1, "layer3": 2}[fine_tune]
    if not count:
        return [fam.head]
    last = fam.stages(model.backbone)[-count:]
    return [name for stage in last for name in stage] + list(fam.ends) + [fam.head]


def build_model(arch: str, num_classes: int, pretrained: bool = False,
                fine_tune: str = "all", image_size: int = 224) -> Classifier:
    """``arch`` with a new head of ``num_classes`` outputs; ``fine_tune`` selects the trainable
    layers. ``image_size`` matters to a ViT only, which is built for one size."""
    from torchvision import models

    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if fine_tune not in FINE_TUNE_CHOICES:
        raise UserError(f"unknown --fine-tune {fine_tune!r}; choose one of "
                        f"{', '.join(FINE_TUNE_CHOICES)}")
    fam = family(arch)
    options = dict(backbone(arch).options)
    if fam.tokens:
        if size_problem(arch, image_size):
            raise UserError(size_problem(arch, image_size))
        options["image_size"] = image_size
    net = getattr(models, backbone(arch).builder)(weights=None, **options)
    if pretrained:
        state = _pretrained_state_dict(arch, imagenet_weights(arch))
        if fam.tokens:
            state = _resize_position_embeddings(state, image_size)
        net.load_state_dict(state)
    model = Classifier(net, fam)
    model.set_head(nn.Linear(model.head.in_features, num_classes))
    trainable = trainable_modules(model, fine_tune)
    if trainable is not None:
        _freeze_all_but(model, trainable)
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
    ResNet50's V2 weights' 224 crop, 256 for V1, 384 for EfficientNetV2-S's 384: no margin);
    256/224 for a model trained from scratch."""
    ratio = 256 / 224
    if pretrained:
        preset = imagenet_weights(arch).transforms()
        ratio = preset.resize_size[0] / preset.crop_size[0]
    return resize_size(image_size, ratio)


def interpolation(arch: str, pretrained: bool) -> str:
    """The resampling of the weights' own transforms (bicubic for SWAG, else bilinear)."""
    if not pretrained:
        return "bilinear"
    return imagenet_weights(arch).transforms().interpolation.value


def decayed(model: nn.Module) -> set[int]:
    """ids of the parameters weight decay applies to: the weights of linear maps (Linear,
    convolutions, attention's projections). Not biases, normalization layers (BatchNorm,
    LayerNorm), ConvNeXt's layer scales, nor a ViT's class token and position embeddings:
    the usual fine-tuning practice (timm, torchvision's references)."""
    ids = set()
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            ids.add(id(module.weight))
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            ids.add(id(module.in_proj_weight))
    return ids


def parameter_groups(model, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0):
    """Optimizer groups: the new head at ``lr`` and the rest of the network at
    ``lr * backbone_lr_mult`` (pretrained features need smaller steps than a random head), each
    with the weights of linear maps decayed and the rest not (``decayed``).
    The head's decayed weights come first: that group's rate is the one logged."""
    head = {id(p) for p in model.head.parameters()}
    decay = decayed(model)
    groups = {(True, True): [], (True, False): [], (False, True): [], (False, False): []}
    for param in model.parameters():
        if param.requires_grad:
            groups[(id(param) in head, id(param) in decay)].append(param)
    return [{"params": params, "lr": lr if in_head else lr * backbone_lr_mult,
             "weight_decay": weight_decay if decays else 0.0}
            for (in_head, decays), params in groups.items() if params]


def display_label(class_name: str) -> str:
    """``001.Affenpinscher`` -> ``Affenpinscher``; ``American_water_spaniel`` -> spaces."""
    head, sep, tail = class_name.partition(".")
    name = tail if sep and head.isdigit() and tail else class_name
    return name.replace("_", " ")


def save_model_dir(model_dir: str | os.PathLike, model: Classifier, *, arch: str,
                   class_names: list[str], image_size: int, resize: int | None = None,
                   eval_image_size: int | None = None, interpolation_mode: str = "bilinear",
                   extra: dict | None = None) -> Path:
    """Write weights, config and the serving code so the directory is self-contained.

    ``resize`` is the shorter side for the ``image_size`` crop (see ``preprocessing``);
    ``eval_image_size`` a larger crop for evaluation and serving, in the same proportion;
    ``interpolation_mode`` the resampling of the resizes (the weights' own, ``interpolation``).
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
        "interpolation": interpolation_mode,
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
    model = build_model(config["arch"], len(config["class_names"]), pretrained=False,
                        image_size=int(config["image_size"]))
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
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:  # truncated: EOFError
        raise UserError(f"cannot extract {archive}: {exc}. Pass a model directory or the "
                        f"model.tar.gz written by a training job.") from None
    return dest
