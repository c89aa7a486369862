"""LP-FT: the Features step's cache, linear-probe trials on it, and TrainFinal from the head.

features.py and the probe run in this process (their main() with arguments, as the scripts'
own entry points call them): the subprocess start would cost more than the work."""

from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pytest

from conftest import SMALL_TRAINING, run_script, train_env

import features as features_script
import train as train_script
from breedkit import features
from breedkit.contract import UserError
from breedkit.logformat import parse_metrics
from breedkit.probe import load_head

SIZE = ("--arch", "resnet18", "--pretrained", "false", "--image-size", "32")


@pytest.fixture(scope="module")
def cached(tmp_path_factory, split_data):
    """Features with 3 views, and one probe trial's model on them."""
    tmp = tmp_path_factory.mktemp("features")
    assert features_script.main(["--train-dir", str(split_data / "train"), "--valid-dir",
                                 str(split_data / "valid"), "--output-dir", str(tmp / "features"),
                                 *SIZE, "--views", "3"]) == 0
    return {"dir": tmp, "features": tmp / "features", "data": split_data}


def probe(cached, out, *extra):
    return train_script.main(["--mode", "linear-probe", "--features-dir", str(cached["features"]),
                              *SIZE, "--lr", "0.003", "--epochs", "4", "--batch-size", "32",
                              "--model-dir", str(out / "model"), "--output-data-dir",
                              str(out / "output"), *extra])


def test_features_are_float16_views_with_their_signature(cached):
    feats = features.load(cached["features"])
    assert feats.train.shape == (3, 90, 512) and feats.train.dtype == np.float16
    assert feats.valid.shape == (1, 30, 512)
    assert list(feats.train_labels) == [0] * 30 + [1] * 30 + [2] * 30
    assert feats.signature["arch"] == "resnet18" and feats.signature["image_size"] == 32
    # view 1 is view 0's mirror image: different vectors; the random crops differ again
    assert not np.array_equal(feats.train[0], feats.train[1])
    assert not np.array_equal(feats.train[1], feats.train[2])


def test_a_probe_trial_prints_the_tuning_metrics_and_writes_a_head(cached, tmp_path, capsys):
    assert probe(cached, tmp_path) == 0
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("epoch=")]
    assert len(epochs) == 4  # one line per epoch, as a fine-tune trial
    metrics = parse_metrics("\n".join(epochs))
    meta = json.loads((tmp_path / "model" / "head.json").read_text())
    assert meta["valid_accuracy"] == pytest.approx(max(metrics["valid:accuracy"]), abs=1e-4)
    assert meta["valid_accuracy"] > 0.6  # colours: learnable from random features too
    assert meta["signature"] == features.load(cached["features"]).signature
    assert (tmp_path / "model" / "head.pt").is_file()


def test_features_of_another_size_or_damaged_files_are_refused(cached, tmp_path):
    with pytest.raises(UserError, match=r"image_size 32 \(expected 64\)"):
        train_script.main(["--mode", "linear-probe", "--features-dir", str(cached["features"]),
                           "--arch", "resnet18", "--pretrained", "false", "--image-size", "64",
                           "--model-dir", str(tmp_path / "m")])
    damaged = tmp_path / "damaged"
    shutil.copytree(cached["features"], damaged)
    data = (damaged / "train.npy").read_bytes()
    (damaged / "train.npy").write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(UserError, match=r"train\.npy is truncated or corrupt"):
        features.load(damaged)
    (damaged / "features.json").unlink()
    with pytest.raises(UserError, match="not the output of a finished Features step"):
        features.load(damaged)
    # --tuning-mode fine-tune: the step extracts nothing, and says so to a probe
    assert features_script.main(["--output-dir", str(tmp_path / "skipped"),
                                 "--tuning-mode", "fine-tune"]) == 0
    with pytest.raises(UserError, match="extracted nothing"):
        features.load(tmp_path / "skipped")


def test_train_final_starts_from_the_probed_head_in_the_trials_archive(cached, tmp_path):
    trial = tmp_path / "trial"
    assert probe(cached, trial) == 0
    channel = tmp_path / "head"  # as SageMaker delivers the best trial's model: its archive
    channel.mkdir()
    with tarfile.open(channel / "model.tar.gz", "w:gz") as tar:
        for item in (trial / "model").iterdir():
            tar.add(item, arcname=item.name)
    proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "1", "--checkpoint-dir", "",
                      "--max-steps-per-epoch", "2", env={**train_env(tmp_path, cached["data"]),
                                                         "SM_CHANNEL_HEAD": str(channel)})
    assert proc.returncode == 0, proc.stderr
    log = proc.stdout + proc.stderr
    assert "starting from the probed head" in log
    config = json.loads((tmp_path / "model" / "model_config.json").read_text())
    head = json.loads((trial / "model" / "head.json").read_text())
    assert config["training"]["probed_head"]["valid_accuracy"] == head["valid_accuracy"]
    # the head joins the backbone's rate (1x from scratch): one lr for every group
    assert "lr 0.003 for the head" in log and "0.003 for the backbone" in log


def test_a_head_of_another_backbone_or_classes_is_refused_and_a_whole_model_ignored(
        cached, tmp_path, trained):
    from breedkit.model import build_model

    assert probe(cached, tmp_path) == 0
    model = build_model("resnet18", 3, pretrained=False)
    sig = features.load(cached["features"]).signature
    names = features.load(cached["features"]).class_names
    other_seed = {**sig, "seed": 7, "backbone_checksum": sig["backbone_checksum"] + 1.0}
    with pytest.raises(UserError, match="features of another backbone: seed 42"):
        load_head(str(tmp_path / "model"), model, names, other_seed)
    with pytest.raises(UserError, match="knows other classes"):
        load_head(str(tmp_path / "model"), model, ["a", "b", "c"], sig)
    assert load_head(str(tmp_path / "model"), model, names, sig)["valid_accuracy"] > 0
    # a fine-tune trial's model (--tuning-mode fine-tune) is no probed head: ignored
    assert load_head(str(trained["model"]), model, names, sig) is None


def scores_the_probes_accuracy(features_dir, data, out, size=SIZE):
    """LP-FT's invariant: before its first fine-tuning step (eval mode, the valid split's
    images through the evaluation transform) the network TrainFinal builds from the best
    head scores what the probe scored on the cached features, within one image."""
    import torch

    from breedkit.data import ImageFolderDataset, make_loader
    from breedkit.model import build_model, preprocessing
    from breedkit.transforms import eval_transform_for

    assert train_script.main(["--mode", "linear-probe", "--features-dir", str(features_dir),
                              *size, "--lr", "0.003", "--epochs", "4", "--batch-size", "32",
                              "--model-dir", str(out / "model"), "--output-data-dir",
                              str(out / "output")]) == 0
    head = json.loads((out / "model" / "head.json").read_text())
    args = train_script.resolve_defaults(train_script.build_parser().parse_args(
        [*size, "--head-dir", str(out / "model")]))
    valid = ImageFolderDataset(str(data / "valid"), transform=eval_transform_for(
        {"image_size": 32, "resize_size": preprocessing(args.arch, False, 32)}))
    torch.manual_seed(args.seed)  # as train.py builds it
    model = build_model(args.arch, len(valid.class_names), False, image_size=32)
    assert train_script.start_from_probed_head(args, model, valid.class_names) is not None
    model.eval()
    right = 0
    with torch.inference_mode():
        for images, labels in make_loader(valid, 16, shuffle=False, workers=0):
            right += int((model(images).argmax(1) == labels).sum())
    assert abs(right - head["valid_accuracy"] * len(valid)) <= 1, (right, head)


def test_a_network_built_from_the_probed_head_scores_the_probes_valid_accuracy(cached,
                                                                               tmp_path):
    scores_the_probes_accuracy(cached["features"], cached["data"], tmp_path)


@pytest.mark.parametrize("arch", ("convnext_tiny", "efficientnet_v2_s", "vit_b_16"))
def test_the_probed_head_fits_every_family(arch, split_data, tmp_path):
    """The Features step takes each family's pooled features from where its head was, and the
    probed head goes back there (ConvNeXt's after its LayerNorm, a ViT's class token)."""
    size = ("--arch", arch, "--pretrained", "false", "--image-size", "32")
    assert features_script.main(["--train-dir", str(split_data / "train"), "--valid-dir",
                                 str(split_data / "valid"), "--output-dir",
                                 str(tmp_path / "features"), *size, "--views", "1"]) == 0
    scores_the_probes_accuracy(tmp_path / "features", split_data, tmp_path, size)


def test_views_follow_hflip(cached, tmp_path):
    """--hflip false: no mirror view and no flipped crops (digits must not be mirrored)."""
    import features as script

    common = ["--train-dir", str(cached["data"] / "train"), "--valid-dir",
              str(cached["data"] / "valid"), *SIZE, "--views", "2"]
    assert script.main([*common, "--output-dir", str(tmp_path / "flip")]) == 0
    assert script.main([*common, "--output-dir", str(tmp_path / "none"), "--hflip",
                        "false"]) == 0
    flip, none = features.load(tmp_path / "flip"), features.load(tmp_path / "none")
    assert np.array_equal(flip.train[0], none.train[0])  # the same center crop
    # view 1: the center crop's mirror image, or (no flips) a random-resized crop
    mirror = features.load(cached["features"]).train[1]  # the 3-view cache's mirror view
    assert np.allclose(flip.train[1], mirror, atol=1e-2)
    assert not np.allclose(none.train[1], mirror, atol=1e-2)
    assert json.loads((tmp_path / "none" / "features.json").read_text())["hflip"] is False

