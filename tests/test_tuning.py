"""The local tuner's bookkeeping with fake trials (no training): objective read from log lines
by the cloud regex, failures recorded, weak trials pruned, best chosen."""

from __future__ import annotations

from pathlib import Path

import boto3

import pytest

from breedkit.logformat import METRIC_DEFINITIONS, OBJECTIVE_METRIC, format_epoch_line
from pipelines.local import inputs, tuning
from pipelines.local.expressions import Unsupported
from pipelines.local.jobs import JobResult, JobStopped


def config(strategy="Bayesian", jobs=5, early="Auto"):
    """A HyperParameterTuningJobConfig as the SDK writes HPTuning's (epochs up to 3)."""
    return {"Strategy": strategy, "TrainingJobEarlyStoppingType": early,
            "HyperParameterTuningJobObjective": {"MetricName": OBJECTIVE_METRIC,
                                                 "Type": "Maximize"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": jobs, "MaxParallelTrainingJobs": 1},
            "ParameterRanges": {
                "ContinuousParameterRanges": [
                    {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.003",
                     "ScalingType": "Logarithmic"},
                    {"Name": "weight-decay", "MinValue": "0.01", "MaxValue": "0.1",
                     "ScalingType": "Logarithmic"},
                    {"Name": "label-smoothing", "MinValue": "0.0", "MaxValue": "0.2",
                     "ScalingType": "Linear"}],
                "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "1",
                                            "MaxValue": "3", "ScalingType": "Auto"}],
                "CategoricalParameterRanges": [{"Name": "batch-size",
                                                "Values": ['"16"', '"32"', '"64"']}]}}


def fake_runner(plan):
    """plan[number] -> per-epoch objective values, or 'fail'."""
    def run_trial(number, hps, on_line):
        outcome = plan[number]
        if outcome == "fail":
            return JobResult(1, "simulated failure", Path("/dev/null"))
        for epoch, value in enumerate(outcome, start=1):
            line = format_epoch_line(epoch, {"train_loss": 1.0, "valid_accuracy": value,
                                             "valid_best_accuracy": value})
            if on_line("noise that mentions best_valid_best_accuracy=0.99: not the regex's"):
                raise JobStopped("train.py")
            if on_line(line):
                raise JobStopped("train.py")
        return JobResult(0, None, Path("/dev/null"))
    return run_trial


def test_trials_are_read_recorded_pruned_and_the_best_is_chosen():
    plan = {0: [0.5, 0.8, 0.9], 1: [0.5, 0.7, 0.95], 2: "fail", 3: [0.1, 0.1, 0.1],
            4: [0.6, 0.85, 0.97]}
    seen = []
    outcomes = tuning.tune(config(), list(METRIC_DEFINITIONS), fake_runner(plan), seed=1,
                           on_trial=seen.append)
    assert [o.number for o in outcomes] == [0, 1, 2, 3, 4] and len(seen) == 5
    states = {o.number: o.state for o in outcomes}
    assert states[2] == "Failed"
    assert states[3] == "Stopped"  # below the median at epoch 2: stopped early
    assert outcomes[3].intermediate == [0.1, 0.1]
    # the objective's regex from the request's MetricDefinitions decides, not the text
    assert outcomes[0].intermediate == [0.5, 0.8, 0.9]
    best = tuning.best(outcomes)
    assert best.number == 4 and best.value == 0.97
    assert set(best.hyperparameters) == {"lr", "batch-size", "epochs", "weight-decay",
                                         "label-smoothing"}
    # as SageMaker passes them: text; a categorical value as the request wrote it
    assert 1 <= int(best.hyperparameters["epochs"]) <= 3
    assert best.hyperparameters["batch-size"] in ('"16"', '"32"', '"64"')
    assert 1e-4 <= float(best.hyperparameters["lr"]) <= 3e-3


def test_strategies_follow_the_request():
    plan = {n: [0.1 * n] for n in range(12)}
    grid = config("Grid", jobs=12)
    with pytest.raises(Unsupported, match="categorical ranges only"):
        tuning.tune(grid, list(METRIC_DEFINITIONS), fake_runner(plan))
    grid["ParameterRanges"]["ContinuousParameterRanges"] = []
    grid["ParameterRanges"]["IntegerParameterRanges"] = []
    grid["ParameterRanges"]["CategoricalParameterRanges"].append(
        {"Name": "optimizer", "Values": ["adamw", "sgd"]})
    del grid["ResourceLimits"]["MaxNumberOfTrainingJobs"]  # Grid needs no limit
    outcomes = tuning.tune(grid, list(METRIC_DEFINITIONS), fake_runner(plan), seed=0)
    combos = {(o.hyperparameters["optimizer"], o.hyperparameters["batch-size"])
              for o in outcomes}
    assert len(outcomes) == 6 and len(combos) == 6  # every combination once, no more

    def not_a_number(number, hps, on_line):  # a regex that matches text: not a crash
        on_line("valid_best_accuracy=0.5 valid_best_accuracy=n/a")
        return fake_runner(plan)(number, hps, on_line)

    (odd,) = tuning.tune(config("Random", jobs=1), [{"Name": OBJECTIVE_METRIC,
                                                     "Regex": r"valid_best_accuracy=(\S+)"}],
                         not_a_number, seed=0)
    assert odd.state == "Completed" and odd.value == 0.0
    random_ = tuning.tune(config("Random", jobs=3, early="Off"), list(METRIC_DEFINITIONS),
                          fake_runner(plan), seed=0)
    assert [o.state for o in random_] == ["Completed"] * 3
    with pytest.raises(Unsupported, match="Hyperband"):
        tuning.tune(config("Hyperband"), list(METRIC_DEFINITIONS), fake_runner(plan))
    with pytest.raises(Unsupported, match="no regex"):
        tuning.tune(config(), [], fake_runner(plan))


def test_input_from_s3_is_downloaded_into_the_cache(tmp_path, fake_aws):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="data")
    s3.put_object(Bucket="data", Key="sets/dogs/a/1.jpg", Body=b"one")
    s3.put_object(Bucket="data", Key="sets/dogs/b/2.jpg", Body=b"two")
    path = inputs.resolve("s3://data/sets/dogs/", tmp_path)
    assert (path / "a/1.jpg").read_bytes() == b"one" and (path / "b/2.jpg").is_file()
    assert inputs.resolve("s3://data/sets/dogs/", tmp_path) == path  # cached
    try:
        inputs.resolve(str(tmp_path / "missing"), tmp_path)
    except inputs.InputError as exc:
        assert "does not exist" in str(exc)
    else:
        raise AssertionError("a missing folder must be an InputError")
