"""The local engine end to end on generated data: one real run, then cache, resume, the false
branch and Ctrl-C on top of it (the steps are cached, so the later runs are quick)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import make_image_folder
from pipelines import localrun, run
from pipelines.local import engine as engine_module
from pipelines.local import jobs
from pipelines.local.engine import LocalEngine, StepFailed
from pipelines.local.store import Store
from pipelines.registry import LocalRegistry

SMALL = {"BaseModel": "resnet18", "Pretrained": "false", "ImageSize": 32,
         "PreprocessImageSize": 36, "TuningEpochs": 1, "MaxTuningJobs": 2,
         "MaxParallelTuningJobs": 2, "Epochs": 6, "AccuracyThreshold": 0.3}
STEPS = ["Preprocess", "Features", "HPTuning", "TrainFinal", "TrainingRules", "Evaluate",
         "CheckTrainingRules", "CheckAccuracy", "CheckImprovement", "RegisterModel-RegisterModel"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Data with two indistinguishable classes, so test accuracy stays clearly below 1."""
    root = tmp_path_factory.mktemp("local")
    data = make_image_folder(root / "data", 30)
    shutil.copytree(data / "001.Red_square", data / "004.Red_square_twin")
    return {"home": root / "home", "data": data}


def run_engine(home, lines, params, *options):
    """What ``python -m pipelines.run --local`` runs: the definition built as --upsert builds
    it, the input staged into the local store."""
    args = run.build_parser().parse_args(["--local", *options])
    return localrun.run_local(args, home["home"], params, echo=lines.append, tracking_uri=None)


def job_folder(home, execution: str, step: str) -> Path:
    """The container root of a step's job: /opt/ml/... under it."""
    return home["home"] / "pipelines" / "DogBreedBuild" / execution / step / "job" / "opt" / "ml"


def execution_rows(home):
    db = sqlite3.connect(home["home"] / "engine.sqlite")
    return db.execute("SELECT id, status, error FROM executions ORDER BY started_at").fetchall()


def test_failed_step_then_resume_from_cache(home, monkeypatch):
    params = {**SMALL, "InputDataUrl": str(home["data"])}
    lines: list[str] = []

    def broken(self, step, request, step_dir):
        raise StepFailed("TrainFinal", "simulated crash")

    monkeypatch.setattr(engine_module.LocalEngine, "_training", broken)
    first = run_engine(home, lines, params)
    assert first.status == "Failed" and "simulated crash" in first.error
    assert [(s.name, s.status) for s in first.steps] == [
        ("Preprocess", "Succeeded"), ("Features", "Succeeded"), ("HPTuning", "Succeeded"),
        ("TrainFinal", "Failed")]
    record = Store(home["home"]).execution(first.execution_id)
    assert record["status"] == "Failed"
    assert len(record["trials"]) == 2 and all(t["state"] == "Completed" for t in record["trials"])
    assert all(json.loads(t["hyperparameters"]).keys() == {"lr", "batch-size", "epochs",
                                                           "weight-decay", "label-smoothing"}
               for t in record["trials"])

    assert any(line.startswith("[Features] 84 training images x 4 view(s)") for line in lines)
    # the tuning step's properties, as DescribeHyperParameterTuningJob and the trials' list
    tuned = json.loads(next(s for s in record["steps"] if s["name"] == "HPTuning")["outputs"])[
        "properties"]
    summaries = tuned["TrainingJobSummaries"]
    values = [s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for s in summaries]
    assert len(summaries) == 2 and values == sorted(values, reverse=True)
    assert summaries[0]["TrainingJobName"] == tuned["BestTrainingJob"]["TrainingJobName"]
    assert tuned["TrainingJobStatusCounters"]["Completed"] == 2

    monkeypatch.undo()
    lines.clear()
    second = run_engine(home, lines, params)
    assert second.status == "Succeeded", second.error
    assert [s.name for s in second.steps] == STEPS
    cached = {s.name: s.cached_from for s in second.steps}
    assert cached["Preprocess"] == cached["Features"] == cached["HPTuning"] == \
        first.execution_id  # resumed
    assert cached["TrainFinal"] is None
    assert any("cache hit" in line for line in lines)
    assert any(line.startswith("[TrainFinal] epoch=6 ") for line in lines)
    # LP-FT: the trials probed heads on cached features; TrainFinal started from the best one
    config = json.loads((job_folder(home, second.execution_id, "TrainFinal") / "model" /
                         "model_config.json").read_text())
    best = max((t for t in record["trials"] if t["state"] == "Completed"),
               key=lambda t: t["value"])
    assert config["training"]["probed_head"]["valid_accuracy"] == pytest.approx(best["value"])
    assert second.registered_version == 1
    assert 0.3 <= second.accuracy < 1.0 and 0.3 <= second.test_accuracy < 1.0
    assert second.best_hyperparameters["epochs"] == 1
    # the training rules ran as their own step on TrainFinal's hook output, each with a verdict
    verdicts = {v["rule"]: v["status"] for v in second.rules}
    assert set(verdicts) == {"LossNotDecreasing", "Overfit", "Overtraining", "VanishingGradient",
                             "ExplodingTensor", "PoorWeightInitialization"}
    assert verdicts["ExplodingTensor"] == "NoIssuesFound"
    assert "Error" not in verdicts.values()
    assert any(line.startswith("[TrainingRules] ExplodingTensor: NoIssuesFound")
               for line in lines)
    assert any(line.startswith("[CheckTrainingRules] blocking rules fired: none") for line in lines)
    # the ProfilerReport: one HTML page with the system and per-step plots
    report = second.reports["profiler_report"]
    page = open(report).read()
    assert "Time per training step" in page and "System use over time" in page
    assert page.count("data:image/png;base64,") == 2 and "data loading" in page

    package = LocalRegistry(home["home"]).describe("DogBreedModels", 1)
    assert package.approval_status == "PendingManualApproval"
    assert package.lineage["execution"] == second.execution_id
    assert package.lineage["data_fingerprint"].startswith("sha256:")
    # the approver's page is linked from the version
    assert "<h1>" in Path(package.lineage["local_paths"]["evaluation_report"]).read_text()
    assert package.lineage["local_paths"]["profiler_report"].endswith("profiler-report.html")
    assert package.metadata["evaluation_report"].endswith("/report.html")
    # the drift baseline (Evaluate's valid split) is registered with the version, beside it
    baseline = json.loads(Path(package.lineage["drift_baseline"]).read_text())
    assert baseline["split"] == "valid" and baseline["images"] == sum(baseline["predicted_counts"])
    assert Path(package.lineage["drift_baseline"]).parent == Path(package.model_data).parent
    # the registered metrics are the test split's; the gate's figure is the valid split's
    assert package.accuracy == pytest.approx(second.test_accuracy)
    assert package.validation_accuracy == pytest.approx(second.accuracy)
    assert package.hyperparameters["epochs"] == 6 and package.hyperparameters["arch"] == \
        "resnet18"
    assert (home["home"] / "models").exists() and package.model_data.endswith(".tar.gz")
    # what an approver sees: the rules' verdicts, the report, both accuracies
    assert package.metadata["rule:ExplodingTensor"] == "NoIssuesFound"
    assert package.metadata["training_rules_blocking_fired"] == "none"
    # as in SageMaker, the report's S3 URI: here, in the local object store
    assert package.metadata["profiler_report"].startswith("s3://dogbreed-local/")
    assert str(LocalEngine(home["home"]).objects.path(package.metadata["profiler_report"])) == \
        report
    assert float(package.metadata["validation_accuracy"]) == pytest.approx(second.accuracy)
    # each step's request, as SageMaker would receive it; each trial's too
    execution = home["home"] / "pipelines" / "DogBreedBuild" / second.execution_id
    request = json.loads((execution / "TrainFinal" / "request.json").read_text())
    assert request["TrainingJobName"].startswith("dogbreed-train-")
    assert request["HyperParameters"]["epochs"] == "6"
    trials = home["home"] / "pipelines" / "DogBreedBuild" / first.execution_id / "HPTuning"
    assert len(list(trials.glob("trial-*/request.json"))) == 2
    # TensorBoard: TrainFinal's events, synced where its TensorBoardOutputConfig says
    (events,) = (home["home"] / "s3" / "dogbreed-local" / "dogbreed" / "tensorboard").glob(
        f"{request['TrainingJobName']}/events.out.tfevents.*")
    assert events.stat().st_size > 0


def test_a_rerun_of_cache_hits_registers_no_duplicate_version(home):
    lines: list[str] = []
    before = LocalRegistry(home["home"]).list("DogBreedModels")
    result = run_engine(home, lines, {**SMALL, "InputDataUrl": str(home["data"])})
    assert result.status == "Succeeded"
    assert all(s.cached_from for s in result.steps[:6])
    assert len(result.rules) == 6  # the verdicts come back with the cached step
    assert set(result.reports) == {"evaluation", "confusion_matrix", "profiler_report",
                                   "evaluation_report"}
    assert all(os.path.exists(path) for path in result.reports.values())
    # the same model archive: the version registered before, not a duplicate of it
    assert result.registered_version == before[0].version == 1
    assert LocalRegistry(home["home"]).list("DogBreedModels") == before
    assert "[RegisterModel-RegisterModel] this model archive is already registered as " \
           "DogBreedModels version 1 (PendingManualApproval): not registered again" in lines
    assert sum(s.seconds for s in result.steps) < 30
    # both accuracies on the version, as in SageMaker (test: the metrics; valid: beside them)
    package = LocalRegistry(home["home"]).describe("DogBreedModels", 1)
    assert package.accuracy == result.test_accuracy
    assert package.validation_accuracy == result.accuracy


def test_accuracy_below_threshold_fails_with_the_numbers(home, capsys):
    versions = len(LocalRegistry(home["home"]).list("DogBreedModels"))
    code = run.main(["--local", "--home", str(home["home"]),
                     *[f"--param={k}={v}" for k, v in SMALL.items() if k != "AccuracyThreshold"],
                     f"--param=InputDataUrl={home['data']}", "--param=AccuracyThreshold=0.99"])
    out = capsys.readouterr().out
    assert code == 1
    assert "AccuracyTooLow" in out and "is below the AccuracyThreshold of 0.99" in out
    assert "Validation accuracy 0." in out
    assert "validation accuracy:" in out and "test accuracy:" in out
    assert execution_rows(home)[-1][1] == "Failed"
    assert len(LocalRegistry(home["home"]).list("DogBreedModels")) == versions  # none new


def test_a_blocking_rule_finding_keeps_the_model_out_of_the_registry(home, monkeypatch, capsys,
                                                                    split_data, tmp_path):
    """TrainFinal's hook output shows exploding tensors: the rule is named, nothing is
    registered, even though the accuracy would pass."""
    from conftest import SMALL_TRAINING, run_script, train_env

    diverged = tmp_path / "diverged"
    proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "1", "--optimizer", "sgd",
                      "--lr", "1e12", "--checkpoint-dir", "", "--debugger-out",
                      diverged / "debugger", "--debugger-save-interval", "1",
                      env=train_env(tmp_path, split_data))
    assert proc.returncode == 2  # diverged; its hook output up to there is what rules read
    real_run = jobs.run_training

    def exploded(request, root, store, log_path, **kwargs):
        result, artifacts = real_run(request, root, store, log_path, **kwargs)
        if request["TrainingJobName"].startswith("dogbreed-train-"):  # TrainFinal, not a trial
            # a model that would pass the gate, with the diverged run's hook output
            output_data = root / "opt" / "ml" / "output" / "data"
            shutil.rmtree(output_data / "debugger")
            shutil.copytree(diverged / "debugger", output_data / "debugger")
            jobs._tar(output_data, root / "output.tar.gz")
            uri = artifacts["ModelArtifacts"]["S3ModelArtifacts"].replace("model.tar.gz",
                                                                          "output.tar.gz")
            store.put_file(root / "output.tar.gz", uri)
        return result, artifacts

    monkeypatch.setattr(jobs, "run_training", exploded)
    versions = len(LocalRegistry(home["home"]).list("DogBreedModels"))
    code = run.main(["--local", "--home", str(home["home"]),
                     *[f"--param={k}={v}" for k, v in SMALL.items() if k != "Epochs"],
                     "--param=Epochs=1", f"--param=InputDataUrl={home['data']}"])
    out = capsys.readouterr().out
    assert code == 1
    assert "[TrainingRules] ExplodingTensor: IssuesFound at step" in out
    assert "[TrainingRulesFired] failed" in out
    assert "Training rule(s) ExplodingTensor found issues in TrainFinal" in out
    assert len(LocalRegistry(home["home"]).list("DogBreedModels")) == versions
    # with the rule not blocking, the same training output is registered
    code = run.main(["--local", "--home", str(home["home"]),
                     *[f"--param={k}={v}" for k, v in SMALL.items() if k != "Epochs"],
                     "--param=Epochs=1", f"--param=InputDataUrl={home['data']}",
                     "--param=BlockingRules=VanishingGradient", "--param=AccuracyThreshold=0"])
    out = capsys.readouterr().out
    assert code == 0, out
    package = LocalRegistry(home["home"]).list("DogBreedModels")[0]
    assert package.version == versions + 1
    assert package.metadata["rule:ExplodingTensor"] == "IssuesFound"


def test_mlflow_runs_of_trials_under_the_tuning_run_and_of_train_final(home, capsys,
                                                                      monkeypatch):
    """--local --mlflow: a store under the home, trials as children of the tuning run, and the
    registered version names TrainFinal's run. With --tuning-mode fine-tune (the old path): the
    trials train whole networks, with the same metrics, and TrainFinal starts from a new head."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = run.main(["--local", "--home", str(home["home"]), "--mlflow", "--no-profiler",
                     "--pipeline-name", "Tracked", "--model-package-group", "Tracked",
                     *[f"--param={k}={v}" for k, v in SMALL.items() if k != "Epochs"],
                     "--param=Epochs=1", f"--param=InputDataUrl={home['data']}",
                     # what one epoch learns varies with the CPU (bf16 or not): not tested here
                     "--param=AccuracyThreshold=0", "--tuning-mode", "fine-tune"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[Features] nothing to extract (--tuning-mode fine-tune)" in out
    client = MlflowClient(f"sqlite:///{home['home'] / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("Tracked")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    (tuning,) = [r for name, r in runs.items() if name.startswith("HPTuning ")]
    trials = [r for name, r in runs.items() if name.startswith("trial-")]
    assert len(trials) == 2
    assert all(t.data.tags["mlflow.parentRunId"] == tuning.info.run_id for t in trials)
    assert all("valid_accuracy" in t.data.metrics and t.data.params["arch"] == "resnet18"
               and t.data.params["mode"] == "fine-tune" for t in trials)
    (final,) = [r for name, r in runs.items() if name.startswith("TrainFinal ")]
    assert final.info.status == "FINISHED" and "mlflow.parentRunId" not in final.data.tags
    (config,) = (home["home"] / "pipelines" / "Tracked").glob(
        "*/TrainFinal/job/opt/ml/model/model_config.json")
    assert json.loads(config.read_text())["training"]["probed_head"] is None  # a new head
    assert {a.path for a in client.list_artifacts(final.info.run_id, "model")} >= {
        "model/model.pth"}
    package = LocalRegistry(home["home"]).list("Tracked")[0]
    assert package.metadata["mlflow_run"] == final.info.run_id
    assert package.lineage["mlflow_run_id"] == final.info.run_id


def test_ctrl_c_marks_the_execution_stopped(home, monkeypatch, capsys):
    real_condition = engine_module.LocalEngine._condition

    def interrupted(self, step, step_dir):
        if step["Name"] == "CheckAccuracy":
            raise KeyboardInterrupt
        return real_condition(self, step, step_dir)

    monkeypatch.setattr(engine_module.LocalEngine, "_condition", interrupted)
    code = run.main(["--local", "--home", str(home["home"]),
                     *[f"--param={k}={v}" for k, v in SMALL.items()],
                     f"--param=InputDataUrl={home['data']}"])
    assert code == 130
    execution_id, status, error = execution_rows(home)[-1]
    assert status == "Stopped" and "Ctrl-C" in error
    steps = dict(sqlite3.connect(home["home"] / "engine.sqlite").execute(
        "SELECT name, status FROM steps WHERE execution_id = ?", (execution_id,)).fetchall())
    assert steps["CheckAccuracy"] == "Stopped" and steps["Evaluate"] == "Succeeded"


def test_pretrained_weights_offline_surface_in_the_summary(home, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    code = run.main(["--local", "--home", str(tmp_path / "h"), "--no-training-rules",
                     "--no-profiler", *[f"--param={k}={v}" for k, v in SMALL.items()
                                        if k != "Pretrained"],
                     "--param=Pretrained=true", f"--param=InputDataUrl={home['data']}"])
    out = capsys.readouterr().out
    assert code == 1
    # the first step that needs the weights (Features) stops the run, saying what to do
    assert "[Features] failed" in out and "Features failed:" in out
    assert "pretrained ImageNet weights" in out and "--pretrained false" in out


def test_bad_local_input_and_flags(home, capsys, tmp_path):
    code = run.main(["--local", "--home", str(tmp_path / "h"),
                     f"--param=InputDataUrl={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err
    # staging comes first: one line, and no execution is started
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "h" / "engine.sqlite").exists()
    assert run.main(["--local", "--upsert"]) == 2
    assert "does not combine" in capsys.readouterr().err


def test_the_home_is_absolute_whatever_the_working_directory(tmp_path, monkeypatch):
    """Steps run in folders of their own: a relative home would point elsewhere there."""
    from pipelines.registry import home_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DOGBREED_HOME", raising=False)
    assert home_dir() == tmp_path / ".dogbreed"
    assert home_dir("rel") == tmp_path / "rel"
    monkeypatch.setenv("DOGBREED_HOME", "from-env")
    assert home_dir() == tmp_path / "from-env"
    assert LocalEngine("relative-home").home == tmp_path / "relative-home"


def test_mlflow_without_mlflow_installed_is_one_line_before_anything_runs(tmp_path, capsys,
                                                                         monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as on an install without the extra
    code = run.main(["--local", "--mlflow", "--home", str(tmp_path / "h"),
                     f"--param=InputDataUrl={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install -e '.[mlflow]'" in err and "Traceback" not in err
    assert not (tmp_path / "h" / "engine.sqlite").exists()  # no execution was started
    # a tracking URI from the environment alone is not a request: a warning, no tracking
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    from pipelines.local.tracking import tracking_uri

    assert tracking_uri(tmp_path / "h", enabled=False) is None
    assert "MLflow cannot be imported" in capsys.readouterr().err


def test_evaluate_compares_with_the_approved_version_and_require_improvement_gates(home,
                                                                                   capsys):
    """--local passes the newest Approved version to Evaluate, which scores the same test
    images with it; with RequireImprovement=true a model that is not better (here: the same
    archive, from the cache) is kept out of the registry."""
    registry = LocalRegistry(home["home"])
    registry.set_status("DogBreedModels", 1, "Approved")
    versions = len(registry.list("DogBreedModels"))
    base = ["--local", "--home", str(home["home"]),
            *[f"--param={k}={v}" for k, v in SMALL.items()],
            f"--param=InputDataUrl={home['data']}"]
    assert run.main([*base, "--param=RequireImprovement=true"]) == 1
    out = capsys.readouterr().out
    assert "Evaluate compares the new model with DogBreedModels version 1 (Approved)" in out
    assert "[Evaluate] against the approved version: +0.0000 (95% interval +0.0000 to " \
           "+0.0000; McNemar p=1) against version 1 on" in out
    assert "NotBetterThanApproved" in out and "RequireImprovement is true" in out
    assert len(LocalRegistry(home["home"]).list("DogBreedModels")) == versions

    # RequireImprovement false (the default): registered as before, the comparison on it
    assert run.main(base) == 0
    out = capsys.readouterr().out
    assert "against the approved version: +0.0000" in out
    requests = sorted(home["home"].rglob("RegisterModel-RegisterModel/request.json"),
                      key=lambda p: p.stat().st_mtime)
    metadata = json.loads(requests[-1].read_text())["CustomerMetadataProperties"]
    assert metadata["vs_approved_version"] == "1"
    assert metadata["accuracy_delta"].startswith("+0.0000 (95% interval")


def test_tune_fine_tune_runs_fine_tuning_trials_from_the_probed_head(home, capsys):
    """--tune-fine-tune: FineTuneTuning's trials fine-tune from HPTuning's best head, each with
    its own backbone rate; TrainFinal takes the best one's."""
    code = run.main(["--local", "--home", str(home["home"]), "--no-profiler",
                     "--no-training-rules", "--tune-fine-tune",
                     "--model-package-group", "FineTuned",  # Preprocess to HPTuning: cached
                     *[f"--param={k}={v}" for k, v in SMALL.items() if k != "Epochs"],
                     "--param=Epochs=1", "--param=MaxFineTuneJobs=2",
                     "--param=FineTuneTuningEpochs=1", f"--param=InputDataUrl={home['data']}",
                     "--param=AccuracyThreshold=0"])
    out = capsys.readouterr().out
    assert code == 0, out
    execution = out.split("local execution ", 1)[1].split(" ", 1)[0]
    record = Store(home["home"]).execution(execution)
    by_step = {}
    for trial in record["trials"]:
        by_step.setdefault(trial["step"], []).append(trial)
    # HPTuning is a cache hit of an earlier run here (its trials are that run's); the store
    # keeps each tuning step's trials apart (the next test)
    assert len(by_step["FineTuneTuning"]) == 2 and set(by_step) <= {"HPTuning", "FineTuneTuning"}
    fine = by_step["FineTuneTuning"]
    assert all(json.loads(t["hyperparameters"]).keys() == {"backbone-lr", "weight-decay",
                                                           "label-smoothing"} for t in fine)
    for trial in fine:  # each started from the probed head, at its own rate
        log = Path(trial["log_path"]).read_text()
        assert "starting from the probed head" in log
    root = home["home"] / "pipelines" / "DogBreedBuild" / execution
    request = json.loads((root / "FineTuneTuning" / "trial-0" / "request.json").read_text())
    assert request["HyperParameters"]["mode"] == '"fine-tune"'
    assert request["HyperParameters"]["epochs"] == "1"
    best = max((t for t in fine if t["state"] == "Completed"), key=lambda t: t["value"])
    config = json.loads((root / "TrainFinal" / "job" / "opt" / "ml" / "model" /
                         "model_config.json").read_text())
    hyperparameters = config["training"]["hyperparameters"]
    assert hyperparameters["backbone_lr"] == pytest.approx(
        json.loads(best["hyperparameters"])["backbone-lr"], rel=1e-3)
    assert config["training"]["probed_head"] is not None
    assert "[FineTuneTuning] best trial" in out


def test_trials_of_a_home_from_before_two_tuning_steps_are_kept(tmp_path):
    """A home written when trials were numbered per execution (all HPTuning's): its trials are
    moved once into the table that records each tuning step's trials apart."""
    tmp_path.mkdir(exist_ok=True)
    db = sqlite3.connect(tmp_path / "engine.sqlite")
    db.executescript("""
        CREATE TABLE trials (execution_id TEXT NOT NULL, number INTEGER NOT NULL,
            state TEXT NOT NULL, hyperparameters TEXT NOT NULL, value REAL,
            intermediate TEXT NOT NULL DEFAULT '[]', log_path TEXT,
            PRIMARY KEY (execution_id, number));
        INSERT INTO trials VALUES ('e1', 0, 'Completed', '{"lr": 0.001}', 0.5, '[]', 'a.log');
        INSERT INTO trials VALUES ('e1', 1, 'Completed', '{"lr": 0.002}', 0.6, '[]', 'b.log');
    """)
    db.commit()
    db.close()
    store = Store(tmp_path)
    store.record_trial("e1", "FineTuneTuning", 0, "Completed", {"backbone-lr": 1e-4}, 0.7, [],
                       "c.log")
    Store(tmp_path)  # a second start moves nothing twice
    db = sqlite3.connect(tmp_path / "engine.sqlite")
    rows = db.execute("SELECT step, number, value FROM tuning_trials ORDER BY step, number"
                      ).fetchall()
    assert rows == [("FineTuneTuning", 0, 0.7), ("HPTuning", 0, 0.5), ("HPTuning", 1, 0.6)]
    assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'trials'").fetchone()
