"""The training rules (breedkit.rules, run by scripts/training_rules.py in both backends): on
real hook output of a healthy and a diverged training, on synthetic trials that isolate each
rule's logic, and on missing or corrupt hook output."""

from __future__ import annotations

import json
import tarfile

import pytest
from smdebug import modes

from conftest import SMALL_TRAINING, run_script, train_env
from breedkit import rules
from breedkit.rules import evaluate_rules


def verdicts_by_rule(path) -> dict:
    return {v["rule"]: v for v in evaluate_rules(str(path))}


def test_rules_quiet_on_healthy_training_and_fire_on_a_diverged_one(tmp_path, split_data):
    healthy = run_script("train.py", *SMALL_TRAINING, "--epochs", "2", "--checkpoint-dir", "",
                         "--debugger-out", tmp_path / "healthy", "--debugger-save-interval", "2",
                         env=train_env(tmp_path / "h", split_data))
    assert healthy.returncode == 0, healthy.stderr
    broken = run_script("train.py", *SMALL_TRAINING, "--epochs", "2", "--optimizer", "sgd",
                        "--lr", "1e12", "--checkpoint-dir", "", "--debugger-out",
                        tmp_path / "broken", "--debugger-save-interval", "1",
                        env=train_env(tmp_path / "b", split_data))
    assert broken.returncode == 2
    good = verdicts_by_rule(tmp_path / "healthy")
    bad = verdicts_by_rule(tmp_path / "broken")
    assert set(good) == set(bad) == {"LossNotDecreasing", "Overfit", "Overtraining",
                                     "VanishingGradient", "ExplodingTensor",
                                     "PoorWeightInitialization"}
    assert {v["status"] for v in good.values()} == {"NoIssuesFound"}
    assert bad["ExplodingTensor"]["status"] == "IssuesFound"
    assert bad["ExplodingTensor"]["step"] is not None
    assert "Error" not in {v["status"] for v in bad.values()}


class FakeTensor:
    def __init__(self, values: dict):
        self.values = values

    def steps(self):
        return sorted(self.values)

    def value(self, step):
        return self.values[step]

    def reduction_value(self, step, name, abs=False):
        raise KeyError(name)


class FakeTrial:
    """Global steps with a mode each, and tensors by collection (what the rules read)."""

    dynamic_refresh = True
    import logging
    logger = logging.getLogger("fake-trial")

    def __init__(self, step_modes: list, collections: dict):
        self.step_modes = step_modes
        self.collections = collections
        self.tensors = {n: FakeTensor(v) for c in collections.values() for n, v in c.items()}

    def steps(self):
        return list(range(len(self.step_modes)))

    def mode(self, step):
        return self.step_modes[step]

    def tensor_names(self, collection=None):
        return list(self.collections.get(collection, {}))

    def tensor(self, name):
        return self.tensors[name]

    def wait_for_steps(self, steps):
        pass


def run_rule(cls, trial, **kwargs):
    from smdebug.exceptions import RuleEvaluationConditionMet
    from smdebug.rules.rule_invoker import invoke_rule

    rule = cls(trial, **kwargs)
    try:
        invoke_rule(rule, start_step=0, end_step=rule.last_step + 1, raise_eval_cond=True)
    except RuleEvaluationConditionMet as exc:
        return exc.step
    return None


def train_trial(losses):
    return FakeTrial([modes.TRAIN] * len(losses),
                     {"losses": {"loss": dict(enumerate(losses))}})


def test_loss_not_decreasing():
    assert run_rule(rules.LossNotDecreasing, train_trial([2.0 - 0.05 * i for i in range(30)])) \
        is None
    assert run_rule(rules.LossNotDecreasing, train_trial([1.0] * 30)) == 19


def phases(train_losses, valid_losses):
    """Alternating training (3 steps) and evaluation (1 step) phases."""
    step_modes, values = [], {}
    for train, valid in zip(train_losses, valid_losses):
        for _ in range(3):
            values[len(step_modes)] = train
            step_modes.append(modes.TRAIN)
        values[len(step_modes)] = valid
        step_modes.append(modes.EVAL)
    return FakeTrial(step_modes, {"losses": {"loss": values}})


def test_overfit_and_overtraining():
    healthy = phases([1.0, 0.8, 0.6], [1.0, 0.8, 0.6])
    assert run_rule(rules.Overfit, healthy) is None
    assert run_rule(rules.Overtraining, healthy) is None
    overfit = phases([1.0, 0.5, 0.3, 0.2], [1.0, 1.0, 1.2, 1.4])
    assert run_rule(rules.Overfit, overfit) is not None
    flat = phases([1.0 - 0.01 * i for i in range(12)], [0.9] * 12)
    assert run_rule(rules.Overtraining, flat) is not None
    assert run_rule(rules.Overtraining, flat, patience_validation=20) is None


@pytest.mark.parametrize("value, fires", [(1e-3, False), (1e-9, True)])
def test_vanishing_gradient(value, fires):
    import numpy as np

    trial = FakeTrial([modes.TRAIN] * 3, {"gradients": {
        "gradient/fc.weight": {s: np.full(4, value) for s in range(3)}}})
    assert (run_rule(rules.VanishingGradient, trial) is not None) == fires


def test_poor_weight_initialization_without_relu_activations_says_so():
    """ConvNeXt, ViT (GELU) and EfficientNetV2 (SiLU) have no ReLU modules: the rule has
    nothing to read, which must not read as NoIssuesFound."""
    import numpy as np

    with pytest.raises(rules.NothingToRead, match="no ReLU modules"):
        run_rule(rules.PoorWeightInitialization, train_trial([1.0, 0.9]))
    def relu(scales):
        return FakeTrial([modes.TRAIN] * 3, {"relu_output": {
            f"layer{i}.relu_output": {s: np.arange(4.0) * scale for s in range(3)}
            for i, scale in enumerate(scales)}})

    assert run_rule(rules.PoorWeightInitialization, relu([1.0, 2.0])) is None  # 4x variance
    assert run_rule(rules.PoorWeightInitialization, relu([1.0, 10.0])) == 0  # 100x: fires


def rules_json(tmp_path, training_output, *extra):
    proc = run_script("training_rules.py", "--training-output", training_output,
                      "--output-dir", tmp_path / "rules", *extra)
    return proc, (json.loads((tmp_path / "rules" / "rules.json").read_text())
                  if proc.returncode == 0 else None)


def test_rules_step_on_a_job_output_archive_with_blocking_findings(tmp_path, split_data):
    """As in SageMaker: the input is TrainFinal's output.tar.gz; a diverged run's
    ExplodingTensor is a blocking finding, counted for the gate and named."""
    out = tmp_path / "job" / "data"
    proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "1", "--optimizer", "sgd",
                      "--lr", "1e12", "--checkpoint-dir", "", "--debugger-out",
                      out / "debugger", "--profile-out", out / "profiler",
                      "--debugger-save-interval", "1", env=train_env(tmp_path, split_data))
    assert proc.returncode == 2
    with tarfile.open(tmp_path / "output.tar.gz", "w:gz") as tar:  # SageMaker's layout
        for item in out.iterdir():
            tar.add(item, arcname=item.name)
    archive_dir = tmp_path / "input"
    archive_dir.mkdir()
    (tmp_path / "output.tar.gz").rename(archive_dir / "output.tar.gz")
    proc, result = rules_json(tmp_path, archive_dir)
    assert proc.returncode == 0, proc.stderr
    verdicts = {v["rule"]: v for v in result["rules"]}
    assert [v["rule"] for v in result["rules"]] == list(rules.RULES)  # a fixed order
    assert verdicts["ExplodingTensor"]["status"] == "IssuesFound"
    assert verdicts["VanishingGradient"]["parameters"] == {"threshold": 1e-07}
    assert result["blocking"] == {"rules": ["ExplodingTensor", "VanishingGradient"],
                                  "count": 1, "fired": "ExplodingTensor",
                                  "summary": "ExplodingTensor"}
    page = (tmp_path / "rules" / "profiler-report.html").read_text()
    assert "Time per training step" in page
    _, result = rules_json(tmp_path, archive_dir, "--blocking-rules", "none")
    assert result["blocking"] == {"rules": [], "count": 0, "fired": "", "summary": "none"}


def test_no_hook_output_and_corrupt_event_files_are_verdicts_not_failures(tmp_path, split_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc, result = rules_json(tmp_path, empty)
    assert proc.returncode == 0, proc.stderr
    assert {v["status"] for v in result["rules"]} == {"Error"}
    assert "no hook output" in result["rules"][0]["message"]
    assert result["blocking"]["count"] == 0  # an Error never blocks registration

    out = tmp_path / "job"
    proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "1", "--max-steps-per-epoch",
                      "2", "--checkpoint-dir", "", "--debugger-out", out / "debugger",
                      "--debugger-save-interval", "1", env=train_env(tmp_path, split_data))
    assert proc.returncode == 0, proc.stderr
    victim = sorted((out / "debugger").rglob("*.tfevents"))[0]
    victim.write_bytes(victim.read_bytes()[:40] + b"garbage" * 10)
    proc, result = rules_json(tmp_path, out)
    assert proc.returncode == 0, proc.stderr
    assert {v["status"] for v in result["rules"]} == {"Error"}
    assert victim.name in result["rules"][0]["message"]
    assert "unreadable event file" in result["rules"][0]["message"]


def test_rules_step_bad_arguments_are_one_line(tmp_path):
    proc = run_script("training_rules.py", "--training-output", tmp_path, "--output-dir",
                      tmp_path / "o", "--blocking-rules", "ExplodingTensors")
    assert proc.returncode == 2 and "unknown rule(s) ExplodingTensors" in proc.stderr
    assert "Traceback" not in proc.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "output.tar.gz").write_bytes(b"not a tar")
    proc = run_script("training_rules.py", "--training-output", bad, "--output-dir",
                      tmp_path / "o")
    assert proc.returncode == 2 and "cannot be read as a tar.gz archive" in proc.stderr
