"""The backbones and fine-tuning choices train.py offers.

Torch-free, so the pipeline's description (pipelines/spec.py) and tools that only deploy or
register models can name them, and refuse sizes a backbone cannot take, without importing torch.
Each backbone is a torchvision builder with one set of its ImageNet weights; ``breedkit.model``
knows each family's head, stages and Grad-CAM layer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    builder: str        # torchvision.models.<builder>
    weights: str        # the member of its weights enum that --pretrained loads
    family: str         # resnet, convnext, efficientnet, vit: head, stages, Grad-CAM layer
    crop: int           # the crop its weights were evaluated at (torchvision's metadata)
    top1: float         # their ImageNet-1K top-1 (torchvision's metadata), for the docs' table
    options: tuple = ()  # builder arguments for fine-tuning, as (name, value) pairs


BACKBONES = {
    "resnet18": Backbone("resnet18", "IMAGENET1K_V1", "resnet", 224, 69.758),
    "resnet34": Backbone("resnet34", "IMAGENET1K_V1", "resnet", 224, 73.314),
    "resnet50": Backbone("resnet50", "IMAGENET1K_V2", "resnet", 224, 80.858),
    "resnet101": Backbone("resnet101", "IMAGENET1K_V2", "resnet", 224, 81.886),
    "convnext_tiny": Backbone("convnext_tiny", "IMAGENET1K_V1", "convnext", 224, 82.52),
    # stochastic depth 0.2, as ConvNeXt's own fine-tuning recipes for B (torchvision's 0.5 is
    # its ImageNet training from scratch: too strong for a few epochs on a few thousand images)
    "convnext_base": Backbone("convnext_base", "IMAGENET1K_V1", "convnext", 224, 84.062,
                              (("stochastic_depth_prob", 0.2),)),
    "efficientnet_v2_s": Backbone("efficientnet_v2_s", "IMAGENET1K_V1", "efficientnet", 384,
                                  84.228),
    "efficientnet_v2_m": Backbone("efficientnet_v2_m", "IMAGENET1K_V1", "efficientnet", 480,
                                  85.112),
    "vit_b_16": Backbone("vit_b_16", "IMAGENET1K_V1", "vit", 224, 81.072),
    # SWAG (Singh et al. 2022): weakly supervised on 3.6B Instagram images, fine-tuned end to
    # end on ImageNet at 384 px
    "vit_b_16_swag": Backbone("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", "vit", 384, 85.304),
}
ARCHS = tuple(BACKBONES)
# what --fine-tune trains besides the head: every layer, the last two stages, the last stage
# (a ResNet's layer3+layer4, layer4; the matching stages or blocks of the other families)
FINE_TUNE_CHOICES = ("all", "layer3", "layer4", "head")
VIT_PATCH = 16


def backbone(arch: str) -> Backbone:
    return BACKBONES[arch]


def size_problem(arch: str, crop: int, eval_crop: int = 0) -> str:
    """Why ``arch`` cannot take these crops ('' when it can). A ViT is built for one image size
    (its position embeddings; pretrained ones are interpolated to the crop), in whole patches:
    it trains, evaluates and serves at that one size."""
    if arch not in BACKBONES or BACKBONES[arch].family != "vit":
        return ""
    if crop % VIT_PATCH:
        return (f"{arch} takes images in whole {VIT_PATCH}-pixel patches: ImageSize {crop} is not "
                f"a multiple of {VIT_PATCH}. Pass {max(VIT_PATCH, crop // VIT_PATCH * VIT_PATCH)} "
                f"or {(crop // VIT_PATCH + 1) * VIT_PATCH}")
    if eval_crop and eval_crop != crop:
        return (f"{arch} is built for one image size: EvalImageSize {eval_crop} differs from "
                f"ImageSize {crop}. Pass EvalImageSize 0 (or {crop}), or a convolutional backbone")
    return ""
