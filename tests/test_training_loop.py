"""The training loop's parts without a GPU: precision choice (mocked capability), the non-finite
loss check, checkpoints under several processes (gloo on CPU), and the fine-tuning recipe."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from ranks import run_ranks

from breedkit import training
from breedkit.contract import UserError
from breedkit.training import Checkpoints, TrainingDiverged, choose_precision, train_one_epoch

CUDA = torch.device("cuda", 0)


# GPU precision and speed ------------------------------------------------------------------------

@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16),   # T4 (ml.g4dn)
                                                  ((7, 0), torch.float16),   # V100 (ml.p3)
                                                  ((8, 0), torch.bfloat16),  # A100
                                                  ((8, 6), torch.bfloat16),  # A10G (ml.g5)
                                                  ((9, 0), torch.bfloat16)])  # H100
def test_bf16_only_where_the_gpu_has_it(monkeypatch, capability, expected):
    # torch.cuda.is_bf16_supported() is True on a T4 as well: it counts emulation
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert choose_precision("auto", CUDA) == expected


def test_cudnn_autotunes_on_gpu_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    training.configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda *a: None)
    training.configure_backends(CUDA)  # training crops and the eval crop have fixed sizes
    assert torch.backends.cudnn.benchmark is True


def tiny_batches(n: int, nan_at: int | None = None):
    gen = torch.Generator().manual_seed(0)
    batches = []
    for step in range(n):
        images = torch.randn(4, 6, generator=gen)
        if step == nan_at:
            images[0, 0] = float("nan")
        batches.append((images, torch.randint(0, 3, (4,), generator=gen)))
    return batches


def run_tiny_epoch(batches, model=None):
    torch.manual_seed(0)
    model = model or nn.Linear(6, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return train_one_epoch(model, batches, optimizer, nn.CrossEntropyLoss(),
                           torch.device("cpu"), epoch=1)


def test_finite_loss_check_does_not_wait_for_the_device_every_step(monkeypatch):
    syncs = []
    for name in ("__bool__", "item"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            syncs.append(_name)
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    steps = 40
    result = run_tiny_epoch(tiny_batches(steps))
    monkeypatch.undo()
    assert result["count"] == 4 * steps
    # each bool()/item() of a GPU tensor stops the CPU until the GPU catches up
    assert len(syncs) <= steps // 8, syncs


def test_non_finite_loss_stops_training_with_a_clear_error():
    with pytest.raises(TrainingDiverged, match=r"diverged.*lower --lr") as caught:
        run_tiny_epoch(tiny_batches(12, nan_at=5))
    assert "epoch 1" in str(caught.value) and "step 5" in str(caught.value)


def _diverge_on_rank_1(rank, world_size):
    model = nn.parallel.DistributedDataParallel(nn.Linear(6, 3))
    return run_tiny_epoch(tiny_batches(12, nan_at=3 if rank == 1 else None), model)


def test_non_finite_loss_on_one_rank_stops_every_rank_with_the_same_error(tmp_path):
    results = run_ranks(_diverge_on_rank_1, 2, tmp_path)
    assert [status for status, _ in results] == ["error", "error"], results
    first_lines = [text.splitlines()[0] for _, text in results]
    assert first_lines[0] == first_lines[1], first_lines
    assert first_lines[0].startswith("TrainingDiverged") and "step 3" in first_lines[0]


# Multi-process checkpoints --------------------------------------------------------------------

def _prepare_many_times(rank, world_size, directory, times):
    return sum(not Checkpoints(directory).prepare() for _ in range(times))


def test_checkpoint_folder_is_write_tested_once_for_all_ranks(tmp_path):
    # each rank write-testing the same probe file races: some rank turns checkpoints off
    failures = run_ranks(_prepare_many_times, 4, tmp_path, str(tmp_path / "ckpt"), 300)
    assert [status for status, _ in failures] == ["ok"] * 4, failures
    assert [count for _, count in failures] == [0, 0, 0, 0]


SIGNATURE = {"lr": 0.1, "class_names": ["a", "b"]}


def weights(value: float) -> dict:
    return {"w": torch.full((2,), float(value))}


def state_after(epoch: int, best_epoch: int) -> dict:
    return {"signature": SIGNATURE, "epoch": epoch, "model": weights(epoch),
            "best_epoch": best_epoch, "best_accuracy": 0.5}


def _load_resume_point(rank, world_size, directories):
    resumed = Checkpoints(directories[rank]).load(SIGNATURE)
    return None if resumed is None else (resumed[0]["epoch"], resumed[1]["w"].tolist())


def test_resume_point_comes_from_one_place_for_every_rank(tmp_path):
    ckpt = Checkpoints(tmp_path / "rank0")
    ckpt.prepare()
    ckpt.save(state_after(1, 1), weights(1))
    ckpt.save(state_after(2, 1))
    # rank 1 sees no checkpoint of its own (another instance, or it lost the write test)
    (tmp_path / "rank1").mkdir()
    results = run_ranks(_load_resume_point, 2, tmp_path,
                        [str(tmp_path / "rank0"), str(tmp_path / "rank1")])
    assert results == [("ok", (2, [1.0, 1.0]))] * 2, results


def test_a_kill_between_the_two_files_never_pairs_new_weights_with_an_old_epoch(
        tmp_path, monkeypatch):
    ckpt = Checkpoints(tmp_path)
    ckpt.prepare()
    ckpt.save(state_after(1, 1), weights(1))
    real_replace, calls = training.os.replace, []

    def killed_at_the_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)
    monkeypatch.setattr(training.os, "replace", killed_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(state_after(2, 2), weights(2))  # epoch 2 improved: both files change
    monkeypatch.undo()
    state, best = Checkpoints(tmp_path).load(SIGNATURE)
    # the best weights are those of the epoch the state calls best
    assert torch.equal(best["w"], weights(state["best_epoch"])["w"]), (state, best)


def test_a_missing_best_checkpoint_is_a_clear_error(tmp_path):
    ckpt = Checkpoints(tmp_path)
    ckpt.prepare()
    ckpt.save(state_after(1, 1), weights(1))
    ckpt.save(state_after(2, 1))  # epoch 2 did not improve: the best is epoch 1's
    (tmp_path / training.BEST_FILE).unlink()
    with pytest.raises(UserError, match=r"names epoch 1 the best.*best\.pt is missing"):
        Checkpoints(tmp_path).load(SIGNATURE)


def test_tuning_trials_write_no_checkpoints_unless_sagemaker_syncs_them(tmp_path, monkeypatch):
    import os

    import train

    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda p: p == "/opt/ml" or real_isdir(p))
    monkeypatch.setenv("SM_CHECKPOINT_CONFIG_FILE", str(tmp_path / "checkpointconfig.json"))
    # a tuning trial inside SageMaker: no CheckpointConfig, so nothing would sync the files
    assert train.build_parser().parse_args([]).checkpoint_dir == ""
    (tmp_path / "checkpointconfig.json").write_text(
        json.dumps({"LocalPath": "/opt/ml/checkpoints/", "S3Uri": "s3://b/ckpt"}))
    assert train.build_parser().parse_args([]).checkpoint_dir == "/opt/ml/checkpoints/"


# The recipe -----------------------------------------------------------------------------------

def test_learning_rate_follows_the_global_batch():
    assert training.scale_lr(1e-3, 1, "adamw") == 1e-3
    assert training.scale_lr(1e-3, 4, "adamw") == pytest.approx(2e-3)  # square root for AdamW
    assert training.scale_lr(1e-2, 4, "sgd") == pytest.approx(4e-2)  # linear for SGD


def test_head_learns_at_the_tuned_rate_and_the_backbone_at_a_fraction():
    from breedkit.model import build_model, parameter_groups

    model = build_model("resnet18", 5)
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1)
    head = {id(p) for p in model.backbone.fc.parameters()}
    for group in groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1  # a group is all head or all backbone
        assert group["lr"] == pytest.approx(1e-3 if in_head == {True} else 1e-4)
        assert group["weight_decay"] == (0.05 if group["params"][0].ndim > 1 else 0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert groups[0]["lr"] == 1e-3  # the first group's rate is the one logged as lr=


def test_recipe_defaults_for_pretrained_and_from_scratch_runs():
    import train

    from pipelines.spec import HYPERPARAMETER_RANGES

    pre = train.resolve_defaults(train.build_parser().parse_args(["--epochs", "10"]))
    assert pre.warmup_epochs == 1.0 and pre.backbone_lr_mult == 0.1
    scratch = train.resolve_defaults(train.build_parser().parse_args(
        ["--pretrained", "false"]))
    assert scratch.warmup_epochs == 0.0 and scratch.backbone_lr_mult == 1.0
    decay = HYPERPARAMETER_RANGES["weight-decay"]
    assert 0.01 <= decay["min"] <= pre.weight_decay <= decay["max"] <= 0.2  # AdamW's range


def test_the_fine_tune_has_its_own_backbone_rate_which_a_probed_head_joins():
    import train

    def rates(*argv, world=1, probed=False):
        args = train.resolve_defaults(train.build_parser().parse_args(list(argv)))
        head, mult = train.learning_rates(args, world, probed)
        return head, head * mult

    # the probe's rate for a new head, a tenth of it for the backbone (no --backbone-lr)
    assert rates("--lr", "2e-3") == pytest.approx((2e-3, 2e-4))
    # LP-FT, before: the probed head and the backbone at the probe's rate x 0.1
    assert rates("--lr", "2e-3", probed=True) == pytest.approx((2e-4, 2e-4))
    # TrainFinal's FineTuneLearningRate: the backbone's own rate, whatever the probe's was
    assert rates("--lr", "2e-3", "--backbone-lr", "1e-4", probed=True) == \
        pytest.approx((1e-4, 1e-4))
    assert rates("--lr", "2e-3", "--backbone-lr", "1e-4") == pytest.approx((2e-3, 1e-4))
    # from scratch no layer is pretrained: everything learns at the (tuned) --lr
    assert rates("--lr", "2e-3", "--backbone-lr", "1e-4", "--pretrained", "false",
                 probed=True) == pytest.approx((2e-3, 2e-3))
    # scaled with the processes as --lr is (AdamW: square root)
    assert rates("--lr", "2e-3", "--backbone-lr", "1e-4", world=4, probed=True) == \
        pytest.approx((2e-4, 2e-4))


def test_evaluation_resizes_as_the_weights_were_trained():
    from breedkit.model import preprocessing
    from breedkit.transforms import eval_transform_for

    assert preprocessing("resnet50", pretrained=True, image_size=224) == 232  # V2 weights
    assert preprocessing("resnet18", pretrained=True, image_size=224) == 256  # V1 weights
    assert preprocessing("resnet50", pretrained=True, image_size=176) == round(176 * 232 / 224)
    assert preprocessing("resnet50", pretrained=False, image_size=224) == 256
    config = {"image_size": 224, "resize_size": 232}
    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    assert eval_transform_for(config)(image).shape == (3, 224, 224)
    # a larger evaluation crop than the training crop, in the same proportion
    larger = eval_transform_for({**config, "eval_image_size": 256})
    assert larger(image).shape == (3, 256, 256)
    assert larger.transforms[0].size == [round(256 * 232 / 224)]
    assert eval_transform_for({"image_size": 32})(image).shape == (3, 32, 32)  # old configs


def test_horizontal_flip_tta_averages_the_two_views():
    from breedkit.model import FlipTTA

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 5, 3))
    images = torch.rand(2, 3, 4, 5)
    both = (net(images).softmax(1) + net(images.flip(-1)).softmax(1)) / 2
    assert torch.allclose(FlipTTA(net)(images).softmax(1), both, atol=1e-6)


@pytest.mark.parametrize("hflip", [True, False])
def test_evaluation_and_serving_use_flip_tta_for_models_trained_with_flips(tmp_path, hflip):
    from breedkit.model import FlipTTA, build_model, load_model, save_model_dir

    save_model_dir(tmp_path, build_model("resnet18", 3), arch="resnet18",
                   class_names=["a", "b", "c"], image_size=32,
                   extra={"training": {"hyperparameters": {"hflip": hflip}}})
    assert isinstance(load_model(tmp_path)[0], FlipTTA) == hflip  # evaluate.py and serving
    assert not isinstance(load_model(tmp_path, tta_hflip=False)[0], FlipTTA)
    assert isinstance(load_model(tmp_path, tta_hflip=True)[0], FlipTTA)


def test_no_bootstrap_rounds_gives_valid_json_without_nan():
    from breedkit.evaluation import compute_metrics

    report = compute_metrics([0, 1, 1], [[.9, .1], [.2, .8], [.6, .4]], ["a", "b"], rounds=0)
    text = json.dumps(report, allow_nan=False)  # NaN is not JSON: the registry rejects it
    accuracy = json.loads(text)["multiclass_classification_metrics"]["accuracy"]
    assert accuracy["standard_deviation"] is None and math.isclose(accuracy["value"], 2 / 3)


def test_the_weights_moving_average_warms_up_and_is_applied_then_restored():
    import torch.nn as nn

    from breedkit.training import WeightAverage

    layer = nn.BatchNorm1d(2)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    average = WeightAverage(layer, decay=0.9)
    with torch.no_grad():
        layer.weight.fill_(3.0)
    average.update()  # warm-up: decay min(0.9, 2/11)
    d = 2 / 11
    assert average.shadow["weight"][0].item() == pytest.approx(d * 1 + (1 - d) * 3)
    for _ in range(200):
        average.update()
    assert average.rate() == 0.9 and average.shadow["weight"][0].item() == pytest.approx(3.0)
    with torch.no_grad():
        layer.weight.fill_(5.0)
    average.update()
    with average.applied():
        assert layer.weight[0].item() == pytest.approx(0.9 * 3 + 0.1 * 5)
    assert layer.weight[0].item() == 5.0  # the raw weights are back
    assert average.shadow["num_batches_tracked"].dtype == torch.int64  # buffers copied
