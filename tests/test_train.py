"""train.py end to end: learning, the log contract, the model directory, resume, failures."""

from __future__ import annotations

import json

import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import torchvision

from conftest import (SCRIPTS, SMALL_TRAINING, make_split_folders, read_json, run_script,
                      train_env)

from breedkit.logformat import METRIC_DEFINITIONS, OBJECTIVE_METRIC, parse_metrics


def test_training_beats_chance_and_logs_the_tuning_metrics(trained):
    metrics = parse_metrics(trained["log"])
    # every SageMaker metric definition reads one value per epoch from the log
    for name in ("train:loss", "train:accuracy", "valid:loss", "valid:accuracy"):
        assert len(metrics[name]) == 5, name
    best = metrics[OBJECTIVE_METRIC]
    assert best == sorted(best)  # best-so-far never decreases
    # the weights' moving average is evaluated beside the raw weights; the better one is kept
    assert len(metrics["valid:ema_accuracy"]) == 5
    assert best[-1] == max(metrics["valid:accuracy"] + metrics["valid:ema_accuracy"])
    summary = json.loads((trained["output"] / "training_summary.json").read_text())
    history = json.loads((trained["output"] / "history.json").read_text())
    epoch = history[summary["best_epoch"] - 1]
    kept = epoch["valid_ema_accuracy" if summary["kept"] == "ema" else "valid_accuracy"]
    assert summary["valid_accuracy"] == kept == best[-1]
    assert best[-1] >= 0.8  # 3 classes: chance is 0.33
    assert metrics["train:loss"][-1] < metrics["train:loss"][0]
    # the valid_accuracy regex must not also match valid_best_accuracy or valid_ema_accuracy
    valid_regex = next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == "valid:accuracy")
    import re
    assert re.findall(valid_regex, "valid_best_accuracy=0.9 valid_ema_accuracy=0.8") == []


def test_model_directory_is_self_contained_and_standard(trained):
    model_dir = trained["model"]
    assert (model_dir / "code/inference.py").is_file()
    assert (model_dir / "code/breedkit/model.py").is_file()
    assert not list(model_dir.rglob("__pycache__"))
    config = read_json(model_dir / "model_config.json")
    assert config["arch"] == "resnet18" and config["image_size"] == 32
    assert config["class_names"] == read_json(model_dir / "classes.json")
    assert config["training"]["valid_accuracy"] == max(
        parse_metrics(trained["log"])["valid:accuracy"])
    # plain torchvision can load the weights, without pickled code
    state = torch.load(model_dir / "model.pth", weights_only=True)
    net = torchvision.models.resnet18(num_classes=3)
    net.load_state_dict(state)
    history = read_json(trained["output"] / "history.json")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    summary = read_json(trained["output"] / "training_summary.json")
    assert summary["best_epoch"] == config["training"]["best_epoch"]


def test_resume_after_a_killed_job_matches_an_uninterrupted_run(tmp_path, split_data):
    args = [*SMALL_TRAINING, "--epochs", "3", "--seed", "3"]
    ref = run_script("train.py", *args, "--checkpoint-dir", tmp_path / "ref-ckpt",
                     env=train_env(tmp_path / "ref", split_data))
    assert ref.returncode == 0, ref.stderr

    env = dict(os.environ, OMP_NUM_THREADS="2", **train_env(tmp_path / "run", split_data))
    cmd = [sys.executable, str(SCRIPTS / "train.py"), *args, "--checkpoint-dir",
           str(tmp_path / "ckpt")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    for line in proc.stdout:  # a spot interruption right after epoch 2
        if line.startswith("epoch=2 "):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "run/model/model.pth").exists()

    resumed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint" in resumed.stdout and "after epoch 2" in resumed.stdout
    assert "epoch=1 " not in resumed.stdout and "epoch=3 " in resumed.stdout
    # the resumed epoch is the same epoch the uninterrupted run trained
    line = lambda text: next(x for x in text.splitlines() if x.startswith("epoch=3 "))  # noqa
    strip = lambda x: " ".join(p for p in x.split() if not p.startswith(  # noqa: E731
        ("epoch_seconds", "images_per_second")))
    assert strip(line(resumed.stdout)) == strip(line(ref.stdout))
    a = torch.load(tmp_path / "ref/model/model.pth", weights_only=True)
    b = torch.load(tmp_path / "run/model/model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_from_other_settings_is_not_resumed(tmp_path, split_data):
    ckpt = tmp_path / "ckpt"
    first = run_script("train.py", *SMALL_TRAINING, "--epochs", "1", "--checkpoint-dir", ckpt,
                       "--max-steps-per-epoch", "2", env=train_env(tmp_path / "a", split_data))
    assert first.returncode == 0, first.stderr
    second = run_script("train.py", *SMALL_TRAINING, "--epochs", "1", "--lr", "0.001",
                        "--max-steps-per-epoch", "2", "--checkpoint-dir", ckpt,
                        env=train_env(tmp_path / "b", split_data))
    assert second.returncode == 0, second.stderr
    assert "ignoring checkpoint" in second.stdout and "lr: 0.003 -> 0.001" in second.stdout
    assert "epoch=1 " in second.stdout


def test_divergence_stops_with_a_clear_error(tmp_path, split_data):
    proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "2", "--optimizer", "sgd",
                      "--lr", "1e12", "--amp", "off", "--checkpoint-dir", "",
                      env=train_env(tmp_path, split_data))
    assert proc.returncode == 2
    assert "diverged" in proc.stderr and "lower --lr" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debugger_output_survives_a_diverged_run(tmp_path, split_data):
    out = tmp_path / "debug"
    proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "2", "--optimizer", "sgd",
                      "--lr", "1e12", "--debugger-out", out, "--debugger-save-interval", "1",
                      "--checkpoint-dir", "", env=train_env(tmp_path, split_data))
    assert proc.returncode == 2 and "diverged" in proc.stderr
    from smdebug.trials import create_trial

    trial = create_trial(str(out))
    (loss,) = trial.tensor_names(collection="losses")
    values = [trial.tensor(loss).value(s) for s in trial.tensor(loss).steps()]
    assert values and not all(map(math.isfinite, (float(v) for v in values)))  # NaN recorded


def test_sagemaker_style_arguments(tmp_path, split_data):
    # SageMaker passes JSON-ish booleans and may add its internal tuning argument
    proc = run_script("train.py", "--arch", "resnet18", "--pretrained", "False", "--image-size",
                      "32", "--epochs", "1", "--batch-size", "16", "--workers", "0",
                      "--max-steps-per-epoch", "1", "--checkpoint-dir", "",
                      "--_tuning_objective_metric", "valid:best_accuracy",
                      env=train_env(tmp_path, split_data))
    assert proc.returncode == 0, proc.stderr
    proc = run_script("train.py", "--epochs", "1", "--learning-rate", "0.1",
                      env=train_env(tmp_path, split_data))
    assert proc.returncode == 2 and "unrecognized arguments: --learning-rate 0.1" in proc.stderr
    proc = run_script("train.py", "--epochs", "0", env=train_env(tmp_path, split_data))
    assert proc.returncode == 2 and "--epochs must be >= 1" in proc.stderr
    proc = run_script("train.py", *SMALL_TRAINING, env=train_env(tmp_path, tmp_path / "nodata"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_pretrained_weights_offline_fail_clearly(tmp_path, split_data):
    env = train_env(tmp_path, split_data)
    env.update(TORCH_HOME=str(tmp_path / "torch-cache"), HTTPS_PROXY="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9")
    proc = run_script("train.py", "--arch", "resnet18", "--pretrained", "true", "--epochs", "1",
                      "--checkpoint-dir", "", env=env)
    assert proc.returncode == 2
    assert "pretrained ImageNet weights for resnet18" in proc.stderr
    assert "--pretrained false" in proc.stderr and "Traceback" not in proc.stderr


def test_training_works_without_smdebug(tmp_path, split_data):
    blocker = tmp_path / "blocker"
    (blocker / "smdebug").mkdir(parents=True)
    (blocker / "smdebug/__init__.py").write_text("raise ImportError('smdebug blocked by test')\n")
    hook_config = tmp_path / "debughookconfig.json"
    hook_config.write_text('{"LocalPath": "%s"}' % (tmp_path / "hook"))
    env = train_env(tmp_path, split_data)
    env.update(PYTHONPATH=str(blocker), SMDEBUG_CONFIG_FILE_PATH=str(hook_config))
    proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "1", "--max-steps-per-epoch", "2",
                      "--checkpoint-dir", "", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "smdebug is not installed" in proc.stdout
    assert (tmp_path / "model/model.pth").is_file()


def test_local_debugger_output_has_reductions_not_full_tensors(tmp_path, split_data):
    out = tmp_path / "debug"
    proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "2", "--max-steps-per-epoch", "4",
                      "--debugger-out", out, "--debugger-save-interval", "2", "--amp", "bf16",
                      "--checkpoint-dir", "", env=train_env(tmp_path, split_data))
    assert proc.returncode == 0, proc.stderr
    assert "precision: bfloat16" in proc.stdout  # the hook no longer forces fp32
    from smdebug import modes
    from smdebug.trials import create_trial

    trial = create_trial(str(out))
    losses = trial.tensor_names(collection="losses")
    assert losses
    assert trial.tensor(losses[0]).steps(mode=modes.TRAIN)
    assert trial.tensor(losses[0]).steps(mode=modes.EVAL)
    gradients = trial.tensor_names(collection="gradients")
    assert gradients
    grad = trial.tensor(gradients[0])
    step = grad.steps()[0]
    assert grad.reduction_value(step, "mean", abs=True) >= 0
    assert grad.reduction_value(step, "l2", abs=False) >= 0
    assert trial.tensor_names(collection="relu_output")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 5_000_000, size


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_torchrun_one_process_equals_plain_and_two_processes_train(tmp_path, split_data):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    args = [*SMALL_TRAINING, "--epochs", "1", "--max-steps-per-epoch", "3", "--checkpoint-dir", ""]
    plain = run_script("train.py", *args, env=train_env(tmp_path / "plain", split_data))
    assert plain.returncode == 0, plain.stderr

    def launch(nproc: int, where: str):
        env = dict(os.environ, OMP_NUM_THREADS="1" if nproc > 1 else "2",
                   **train_env(tmp_path / where, split_data))
        return subprocess.run([torchrun, "--standalone", f"--nproc_per_node={nproc}",
                               str(SCRIPTS / "train.py"), *args], capture_output=True, text=True,
                              env=env, timeout=600)

    one = launch(1, "one")
    assert one.returncode == 0, one.stderr
    a = torch.load(tmp_path / "plain/model/model.pth", weights_only=True)
    b = torch.load(tmp_path / "one/model/model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)

    two = launch(2, "two")
    assert two.returncode == 0, two.stderr
    assert "2 process(es)" in two.stdout
    # the global batch doubled: AdamW's rate grows by sqrt(2) (breedkit.training.scale_lr)
    summary = read_json(tmp_path / "two/output/training_summary.json")
    assert summary["head_lr"] == pytest.approx(0.003 * 2 ** 0.5)
    epoch_lines = [x for x in two.stdout.splitlines() if x.startswith("epoch=1 ")]
    assert len(epoch_lines) == 1  # only rank 0 logs the epoch
    assert (tmp_path / "two/model/model.pth").is_file()


def test_bad_image_in_training_data_names_the_file(tmp_path):
    data = make_split_folders(tmp_path / "data", 4, 2)
    bad = next((data / "train").iterdir()) / "broken.jpg"
    bad.write_bytes(b"garbage")
    for workers in ("0", "1"):  # raised in the main process, or in a loader worker
        proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "1", "--checkpoint-dir", "",
                          "--workers", workers, env=train_env(tmp_path, data))
        assert proc.returncode == 2
        assert "broken.jpg" in proc.stderr and "preprocess.py" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_multi_instance_sagemaker_job_forms_a_process_group_from_sm_hosts():
    from breedkit.distributed import sagemaker_multi_host

    env = {"SM_HOSTS": '["algo-1", "algo-2", "algo-3"]', "SM_CURRENT_HOST": "algo-2"}
    assert sagemaker_multi_host(env) == {"WORLD_SIZE": "3", "RANK": "1", "LOCAL_RANK": "0",
                                         "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "algo-1",
                                         "MASTER_PORT": "29500"}
    assert sagemaker_multi_host({"SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1"}) is None
    assert sagemaker_multi_host({**env, "WORLD_SIZE": "2"}) is None  # torchrun decides
