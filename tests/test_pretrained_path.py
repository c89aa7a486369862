"""The product's default path, ``Pretrained=true`` with LP-FT, run end to end on this machine:
torchvision finds a backbone pretrained here (tests/pretrained.py) where it looks for its
ImageNet weights, and the local pipeline runs the definition --upsert sends."""

from __future__ import annotations

import json

import pytest

import pretrained
from conftest import make_image_folder
from pipelines import run
from pipelines.registry import LocalRegistry

PARAMS = {"BaseModel": "resnet18", "ImageSize": 32, "TuningEpochs": 2, "MaxTuningJobs": 2,
          "MaxParallelTuningJobs": 2, "Epochs": 2, "AccuracyThreshold": 0.5}


@pytest.fixture(scope="module")
def planted():
    return pretrained.torch_home("resnet18")


def test_the_pretrained_default_runs_offline_with_lp_ft(planted, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(planted))
    for proxy in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # a download would fail: none happens
    data = make_image_folder(tmp_path / "data", 30)
    home = tmp_path / "home"
    code = run.main(["--local", "--home", str(home), *[f"--param={k}={v}" for k, v in
                                                        PARAMS.items()],
                     f"--param=InputDataUrl={data}"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "registered: version 1" in out
    execution = next((home / "pipelines" / "DogBreedBuild").iterdir())

    # the weights were loaded: the Features step's signature is of the pretrained backbone
    features = json.loads(next((home / "s3").rglob("Features/output/features/features.json"))
                          .read_text())
    assert features["signature"]["pretrained"] is True
    job = execution / "TrainFinal" / "job" / "opt" / "ml"
    config = json.loads((job / "model" / "model_config.json").read_text())
    training = config["training"]
    # LP-FT: TrainFinal started from the best probed head, at the fine-tune's own rate
    assert training["probed_head"]["valid_accuracy"] > 0.8
    assert training["hyperparameters"]["pretrained"] is True
    assert training["backbone_lr"] == pytest.approx(1e-4) == training["head_lr"]
    # the weights' own transforms: resnet18's V1 weights evaluate 224 of 256 (37 for 32)
    assert config["resize_size"] == 37
    # and the size preprocessing stored the images at (derived: 37 for 32), which serving
    # repeats before the evaluation transform
    assert config["preprocess_size"] == 37
    package = LocalRegistry(home).describe("DogBreedModels", 1)
    assert package.accuracy > 0.8
