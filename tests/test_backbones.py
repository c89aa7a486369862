"""Every backbone BaseModel offers: its weights, head, stages, parameter groups, Grad-CAM layer,
sizes and resampling; and a ViT through train.py, evaluate.py and serving."""

from __future__ import annotations

import io
import json
import os

import pytest
import torch
import torch.nn as nn
from PIL import Image

from conftest import read_json, run_script, train_env

from breedkit.archs import ARCHS, BACKBONES, size_problem
from breedkit.contract import UserError
from breedkit.model import (FAMILIES, build_model, decayed, imagenet_weights, interpolation,
                            load_model, parameter_groups, preprocessing, save_model_dir)
from breedkit.report import grad_cam

# one backbone of each family, the smallest (a ViT-B is the only ViT)
ONE_OF_EACH = ("resnet18", "convnext_tiny", "efficientnet_v2_s", "vit_b_16")


def test_every_backbone_names_torchvision_weights_as_their_metadata_describes():
    families = set()
    for arch, spec in BACKBONES.items():
        weights = imagenet_weights(arch)  # a member of the builder's weights enum
        assert weights.transforms().crop_size == [spec.crop], arch
        assert weights.meta["_metrics"]["ImageNet-1K"]["acc@1"] == spec.top1, arch
        families.add(spec.family)
    assert families == set(FAMILIES)
    assert set(ONE_OF_EACH) <= set(ARCHS)
    assert os.path.basename(imagenet_weights("vit_b_16_swag").url).startswith("vit_b_16_swag")


@pytest.mark.parametrize("arch", ONE_OF_EACH)
def test_each_family_gets_a_new_head_and_decays_only_the_weights_of_linear_maps(arch):
    torch.manual_seed(0)
    model = build_model(arch, 5, image_size=32)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 5
    assert model.eval()(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 5)

    decay = decayed(model)
    never = {id(p) for m in model.modules()
             if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm))
             for p in m.parameters(recurse=False)}
    never |= {id(p) for name, p in model.named_parameters()
              if name.endswith(("bias", "layer_scale", "class_token", "pos_embedding"))}
    assert never and not never & decay
    linear = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert linear <= decay
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1)
    assert groups[0]["params"] == [model.head.weight] and groups[0]["lr"] == 1e-3
    for group in groups:
        assert group["weight_decay"] == (0.05 if id(group["params"][0]) in decay else 0.0)
        assert all((id(p) in decay) == (group["weight_decay"] > 0) for p in group["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("arch", ONE_OF_EACH)
def test_fine_tune_choices_train_the_last_stages_and_the_head(arch):
    counts = {}
    for choice in ("head", "layer4", "layer3", "all"):
        model = build_model(arch, 5, fine_tune=choice, image_size=32)
        trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
        counts[choice] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        head = model.family.head + "."
        if choice == "head":
            assert all(n.startswith(head) for n in trainable) and trainable
        assert any(n.startswith(head) for n in trainable)
        model.train()
        for module in model.frozen:  # frozen layers keep their normalization statistics
            assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert counts["head"] < counts["layer4"] < counts["layer3"] < counts["all"]
    # layer4: the last stage, what lies between it and the head, the head; nothing before
    model = build_model(arch, 5, fine_tune="layer4", image_size=32)
    from breedkit.model import trainable_modules

    names = trainable_modules(model, "layer4")
    for name, param in model.backbone.named_parameters():
        assert param.requires_grad == any(name.startswith(n + ".") for n in names), name
    last = {"resnet18": "layer4", "convnext_tiny": "features.7",
            "efficientnet_v2_s": "features.6", "vit_b_16": "encoder.layers.encoder_layer_11"}
    assert last[arch] in names and model.family.head in names
    # the last stage is the late part of the network, not its stem
    model = build_model(arch, 5, fine_tune="layer4", image_size=32)
    first = next(iter(model.backbone.named_parameters()))
    assert not first[1].requires_grad, first[0]


@pytest.mark.parametrize("arch", ONE_OF_EACH)
def test_grad_cam_places_a_heatmap_for_each_family(arch):
    torch.manual_seed(0)
    model = build_model(arch, 3, image_size=64).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    heat = grad_cam(model, images, [0, 2])
    assert heat is not None and heat.shape == (2, 64, 64)
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    assert heat.reshape(2, -1).std(axis=1).max() > 0  # a map, not a constant (the patch
    # tokens leaving a ViT's last block would give none: the class token does not read them)


def test_a_stateless_module_keeps_its_training_mode_when_its_neighbours_are_frozen():
    """EfficientNetV2's dropout before the head regularizes a head-only fine-tune as it does a
    whole one; frozen stages skip their stochastic depth (they keep their statistics)."""
    from torchvision.ops import StochasticDepth

    model = build_model("efficientnet_v2_s", 3, fine_tune="head").train()
    assert model.backbone.classifier[0].training
    frozen = [m for m in model.backbone.features.modules() if isinstance(m, StochasticDepth)]
    assert frozen and not any(m.training for m in frozen)


def test_convnext_base_fine_tunes_with_a_fine_tuning_stochastic_depth():
    from torchvision.ops import StochasticDepth

    def deepest(arch):
        return max(m.p for m in build_model(arch, 3).modules() if isinstance(m, StochasticDepth))

    assert deepest("convnext_base") == pytest.approx(0.2)  # torchvision's default: 0.5
    assert deepest("convnext_tiny") == pytest.approx(0.1)


def test_a_vit_takes_one_size_in_whole_patches():
    assert size_problem("vit_b_16", 224) == "" and size_problem("convnext_tiny", 230, 300) == ""
    assert "multiple of 16" in size_problem("vit_b_16", 230)
    assert "EvalImageSize 288 differs" in size_problem("vit_b_16_swag", 224, 288)
    with pytest.raises(UserError, match="multiple of 16"):
        build_model("vit_b_16", 3, image_size=40)
    from pipelines import spec

    assert "multiple of 16" in spec.size_problem({"BaseModel": "vit_b_16", "ImageSize": "100"})
    assert spec.size_problem({"BaseModel": "convnext_tiny", "ImageSize": "100"}) == ""


def test_pretrained_vit_position_embeddings_follow_the_crop(monkeypatch):
    """The weights (384 px for SWAG) are interpolated to the training crop, class token and
    blocks unchanged."""
    from breedkit import model as model_module

    torch.manual_seed(0)
    source = {k: v.clone() for k, v in
              build_model("vit_b_16", 1000, image_size=384).backbone.state_dict().items()}
    # torchvision's interpolation writes into the dict it is given: hand it a copy
    monkeypatch.setattr(model_module, "_pretrained_state_dict",
                        lambda arch, weights: dict(source))
    model = build_model("vit_b_16_swag", 4, pretrained=True, image_size=64)
    state = model.backbone.state_dict()
    assert state["encoder.pos_embedding"].shape == (1, 1 + 4 * 4, 768)
    assert source["encoder.pos_embedding"].shape == (1, 1 + 24 * 24, 768)
    assert torch.equal(state["class_token"], source["class_token"])
    assert torch.equal(state["encoder.pos_embedding"][:, 0], source["encoder.pos_embedding"][:, 0])
    name = "encoder.layers.encoder_layer_3.mlp.0.weight"
    assert torch.equal(state[name], source[name])


def test_each_backbone_resizes_as_its_weights_were_evaluated():
    assert preprocessing("vit_b_16_swag", True, 384) == 384  # no margin, bicubic
    assert interpolation("vit_b_16_swag", True) == "bicubic"
    assert preprocessing("convnext_tiny", True, 224) == 236
    assert interpolation("convnext_tiny", True) == "bilinear"
    assert preprocessing("efficientnet_v2_s", True, 384) == 384
    assert interpolation("vit_b_16_swag", False) == "bilinear"  # no weights, no preference
    from breedkit.transforms import eval_transform_for

    image = torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8)
    config = {"image_size": 32, "resize_size": 40}
    bicubic = eval_transform_for({**config, "interpolation": "bicubic"})(image)
    assert not torch.equal(bicubic, eval_transform_for(config)(image))


def test_pretrained_swag_weights_offline_name_their_own_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-cache"))
    for proxy in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    with pytest.raises(UserError) as refused:
        build_model("vit_b_16_swag", 3, pretrained=True, image_size=384)
    assert "vit_b_16_swag-9ac1b537.pth" in str(refused.value)
    assert "--pretrained false" in str(refused.value)


@pytest.mark.parametrize("arch", ("vit_b_16",))
def test_a_vit_trains_evaluates_and_serves(arch, tmp_path, split_data):
    """The family that differs most: built for one size, tokens for Grad-CAM, no ReLU. The
    others' heads, stages and Grad-CAM are tested above, their probed heads in test_features."""
    proc = run_script("train.py", "--arch", arch, "--pretrained", "false", "--image-size", "32",
                      "--batch-size", "16", "--workers", "0", "--epochs", "1",
                      "--max-steps-per-epoch", "2", "--fine-tune", "layer4",
                      "--checkpoint-dir", "", "--debugger-out", tmp_path / "hook",
                      "--debugger-save-interval", "1", env=train_env(tmp_path, split_data))
    assert proc.returncode == 0, proc.stderr
    from breedkit.rules import evaluate_rules

    verdicts = {v["rule"]: v for v in evaluate_rules(str(tmp_path / "hook"))}
    assert verdicts["ExplodingTensor"]["status"] == "NoIssuesFound"  # the hook read the ViT
    assert verdicts["PoorWeightInitialization"]["status"] == "Error"
    assert "no ReLU modules" in verdicts["PoorWeightInitialization"]["message"]
    config = read_json(tmp_path / "model" / "model_config.json")
    assert config["arch"] == arch and config["interpolation"] == "bilinear"
    trained, _ = load_model(tmp_path / "model", tta_hflip=False)
    assert trained.head.out_features == 3

    out = tmp_path / "eval"
    proc = run_script("evaluate.py", "--model-dir", tmp_path / "model", "--test-dir",
                      split_data / "test", "--output-dir", out)
    assert proc.returncode == 0, proc.stderr
    assert read_json(out / "evaluation.json")["num_images"] == 30
    assert "data:image/png" in (out / "report.html").read_text()

    import inference

    loaded = inference.model_fn(str(tmp_path / "model"))
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (200, 30, 30)).save(buffer, format="JPEG")
    answer = json.loads(inference.output_fn(inference.predict_fn(
        inference.input_fn(buffer.getvalue(), "application/x-image"), loaded)))
    assert answer["predictions"][0]["class"] in config["class_names"]


def test_a_saved_vit_loads_at_its_own_size(tmp_path):
    torch.manual_seed(0)
    model = build_model("vit_b_16", 3, image_size=48).eval()
    save_model_dir(tmp_path, model, arch="vit_b_16", class_names=["a", "b", "c"], image_size=48,
                   interpolation_mode="bicubic")
    loaded, config = load_model(tmp_path, tta_hflip=False)
    images = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images), atol=1e-5)
    assert config["interpolation"] == "bicubic"
