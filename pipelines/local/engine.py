"""Run the build pipeline locally: Preprocess -> Features -> HPTuning -> TrainFinal ->
TrainingRules -> Evaluate -> CheckTrainingRules -> CheckAccuracy -> RegisterModel | AccuracyTooLow
(or TrainingRulesFired), as pipelines/spec.py defines it.

Layout under the home folder::

    <home>/engine.sqlite                 executions, steps, trials, step cache
    <home>/registry.sqlite               the local model registry
    <home>/cache/                        downloads and rendered sample data
    <home>/pipelines/<name>/<execution>/<step>/   each step's files and log (TensorBoard
                                         events under TrainFinal/ and HPTuning/trial-N/)
    <home>/mlflow/                       MLflow runs, with --mlflow (mlflow.db, artifacts/)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from breedkit.contract import cpu_count
from pipelines import spec
from pipelines.registry import LocalRegistry
from pipelines.spec import SCRIPTS_DIR, BuildOptions, scripts_digest

from breedkit.rulespec import RULES_FILE, REPORT_FILE
from breedkit.tracking import RUN_ID_FILE

from . import inputs, tuning
from .jobs import map_paths, run_script, training_contract
from .store import Store

# Which parameters each step's result depends on (its cache key), besides its inputs.
STEP_PARAMETERS = {
    spec.STEP.PREPROCESS: ("PreprocessImageSize",),
    spec.STEP.FEATURES: ("ImageSize", "BaseModel", "Pretrained", "FeatureViews", "TuningMode"),
    spec.STEP.TUNE: ("ImageSize", "BaseModel", "Pretrained", "TuningEpochs", "MaxTuningJobs",
                     "MaxParallelTuningJobs", "TuningMode"),
    spec.STEP.TRAIN: ("ImageSize", "BaseModel", "Pretrained", "Epochs", "FineTuneLayers"),
    spec.STEP.RULES: ("BlockingRules",),
    spec.STEP.EVALUATE: (),
}


class StepFailed(Exception):
    def __init__(self, step: str, message: str):
        super().__init__(f"{step} failed: {message}")
        self.step = step


class PipelineFailed(Exception):
    """The Fail step: the execution ends as Failed with this message."""


@dataclass
class StepRecord:
    name: str
    status: str
    seconds: float
    cached_from: str | None = None
    detail: str = ""


@dataclass
class RunResult:
    execution_id: str
    status: str
    steps: list[StepRecord] = field(default_factory=list)
    best_hyperparameters: dict = field(default_factory=dict)
    accuracy: float | None = None
    test_accuracy: float | None = None
    registered_version: int | None = None
    reports: dict = field(default_factory=dict)
    rules: list = field(default_factory=list)
    error: str | None = None


class LocalPipeline:
    def __init__(self, home: str | os.PathLike, pipeline_name: str = spec.DEFAULT_PIPELINE_NAME,
                 model_package_group: str = spec.DEFAULT_MODEL_PACKAGE_GROUP,
                 options: BuildOptions | None = None, echo=print,
                 tracking_uri: str | None = None):
        self.home = Path(home).expanduser().resolve()  # steps run in other folders
        self.name = pipeline_name
        self.group = model_package_group
        self.options = options or BuildOptions()
        self.echo = echo
        self.store = Store(self.home)
        self.code_version = scripts_digest(SCRIPTS_DIR)
        self.tracking_uri = tracking_uri  # MLflow: runs of the trials and TrainFinal
        self._experiment = None  # its MLflow experiment id, looked up once

    # -- the pipeline --------------------------------------------------------------------------

    def run(self, params: dict) -> RunResult:
        params = {**{p.name: p.default for p in spec.PARAMETERS}, **params}
        if not params["InputDataUrl"]:
            params["InputDataUrl"] = "sklearn-digits"
        for orphan in self.store.fail_orphans():
            self.echo(f"execution {orphan['id']} marked Failed: {orphan['error']}")
        execution_id = self.store.new_execution(self.name, params)
        self.root = self.home / "pipelines" / self.name / execution_id
        self.result = RunResult(execution_id, "Executing")
        self.params = params
        self._resolved_input = None  # InputDataUrl, resolved once per run
        self._rules_report = None  # TrainingRules' rules.json, read once per run
        self.echo(f"local execution {execution_id} of {self.name} (home {self.home})")
        try:
            data = self._step(spec.STEP.PREPROCESS, self._preprocess)
            features = self._step(spec.STEP.FEATURES, self._features, data)
            tuned = self._step(spec.STEP.TUNE, self._tune, data, features)
            model = self._step(spec.STEP.TRAIN, self._train, data, tuned)
            rules = (self._step(spec.STEP.RULES, self._rules, model)
                     if self.options.training_rules or self.options.profiler else None)
            evaluation = self._step(spec.STEP.EVALUATE, self._evaluate, data, model)
            if self.options.training_rules and not self._step(spec.STEP.CHECK_RULES,
                                                              self._check_rules, rules):
                self._step(spec.STEP.RULES_FIRED, self._rules_fired, rules)
            elif self._step(spec.STEP.CHECK, self._check, evaluation):
                self._step(spec.STEP.REGISTER, self._register, data, tuned, model, evaluation,
                           rules)
            else:
                self._step(spec.STEP.FAIL, self._fail)
            self.result.status = "Succeeded"
        except KeyboardInterrupt:
            self.result.status, self.result.error = "Stopped", "stopped by the user (Ctrl-C)"
        except (StepFailed, PipelineFailed) as exc:
            self.result.status, self.result.error = "Failed", str(exc)
        except Exception as exc:  # an engine bug: record it, then let it surface
            self.result.status, self.result.error = "Failed", f"{type(exc).__name__}: {exc}"
            self.store.end_execution(execution_id, "Failed", self.result.error)
            raise
        self.store.end_execution(execution_id, self.result.status, self.result.error)
        return self.result

    def _step(self, name: str, fn, *args):
        """Run one step: record it, reuse the cache where the step allows, print progress."""
        step_dir = self.root / name
        step_dir.mkdir(parents=True, exist_ok=True)
        log_path = step_dir / "step.log"
        self.store.start_step(self.result.execution_id, name, str(log_path))
        self.echo(f"[{name}] started")
        start = time.perf_counter()
        key = None
        try:  # the key reads the input (Preprocess): its errors are this step's failure
            key = self._cache_key(name, args) if name in STEP_PARAMETERS else None
            hit = self.store.cached(self.name, name, key) if key else None
            if hit and all(Path(p).exists() for p in _paths(hit["outputs"])):
                outputs, cached_from = hit["outputs"], hit["execution_id"]
                self.echo(f"[{name}] cache hit: reusing the outputs of execution {cached_from}")
            else:
                outputs, cached_from = fn(step_dir, *args), None
                if key:
                    outputs["cache_key"] = key  # what downstream steps' keys build on
                    self.store.remember(self.name, name, key, self.result.execution_id, outputs)
            if isinstance(outputs, dict):
                self._replay(name, outputs)
        except KeyboardInterrupt:
            self._end(name, "Stopped", start, error="stopped by the user")
            raise
        except Exception as exc:
            known = isinstance(exc, (StepFailed, PipelineFailed))
            self._end(name, "Failed", start,
                      error=str(exc) if known else f"{type(exc).__name__}: {exc}")
            raise
        self._end(name, "Succeeded", start, outputs=outputs if isinstance(outputs, dict) else
                  {"value": outputs}, key=key, cached_from=cached_from)
        return outputs

    def _end(self, name, status, start, *, outputs=None, key=None, cached_from=None,
             error=None):
        seconds = time.perf_counter() - start
        self.store.end_step(self.result.execution_id, name, status, seconds, outputs=outputs,
                            cache_key=key, cached_from=cached_from, error=error)
        self.result.steps.append(StepRecord(name, status, seconds, cached_from, error or ""))
        self.echo(f"[{name}] {status.lower()} in {seconds:.1f}s" + (f": {error}" if error else ""))

    def _cache_key(self, name: str, args) -> str:
        upstream = [a.get("cache_key", "") if isinstance(a, dict) else str(a) for a in args]
        if name == spec.STEP.PREPROCESS:
            upstream.append(self._input_fingerprint())
        material = {"step": name, "code": self.code_version, "upstream": upstream,
                    "params": {p: self.params[p] for p in STEP_PARAMETERS[name]},
                    "options": [self.options.training_rules, self.options.profiler]
                    if name in (spec.STEP.TRAIN, spec.STEP.RULES) else []}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    def _input_fingerprint(self) -> str:
        path = self._input_path()
        return f"{path}:{inputs.fingerprint(path)}"

    def _input_path(self) -> Path:
        if self._resolved_input is None:
            try:
                self._resolved_input = inputs.resolve(self.params["InputDataUrl"],
                                                      self.home / "cache")
            except inputs.InputError as exc:
                raise StepFailed(spec.STEP.PREPROCESS, str(exc)) from None
        return self._resolved_input

    def _replay(self, name: str, outputs: dict) -> None:
        """What a step, run or taken from the cache, contributes to the run's summary."""
        if name == spec.STEP.TUNE:
            self.result.best_hyperparameters = outputs["best"]
        elif name == spec.STEP.RULES:
            self._rules_report = json.loads(Path(outputs["rules_file"]).read_text())
            if self.options.training_rules:
                self.result.rules = self._rules_report["rules"]
                for v in self.result.rules:
                    where = f" at step {v['step']}" if v["step"] is not None else ""
                    self.echo(f"[{spec.STEP.RULES}] {v['rule']}: {v['status']}{where}"
                              + (f" ({v['message']})" if v["status"] == "Error" else ""))
            if self.options.profiler:
                self.result.reports["profiler_report"] = outputs["profiler_report"]
        elif name == spec.STEP.EVALUATE:
            self.result.test_accuracy = _accuracy(outputs["report"])
            self.result.reports["evaluation"] = outputs["report"]
            self.result.reports["confusion_matrix"] = str(Path(outputs["evaluation"]) /
                                                          "confusion_matrix.png")

    # -- steps ---------------------------------------------------------------------------------

    def _processing(self, job: dict, step_dir: Path, input_paths: dict, name: str) -> dict:
        outputs = {out: step_dir / out for out in job["outputs"]}
        mapping = {job["inputs"][k]: Path(v) for k, v in input_paths.items()}
        mapping.update({path: outputs[out] for out, path in job["outputs"].items()})
        mapping[spec.PROCESSING_ROOT] = step_dir
        args = [str(self.params[a]) if isinstance(a, spec.Param) else a for a in job["arguments"]]
        result = run_script(job["script"], map_paths(args, mapping), step_dir / "step.log",
                            env={"SM_OUTPUT_DIR": str(step_dir / "job-output")})
        if result.returncode != 0:
            raise StepFailed(name, f"{result.failure_reason} (log: {result.log_path})")
        return {k: str(v) for k, v in outputs.items()}

    def _preprocess(self, step_dir: Path) -> dict:
        outputs = self._processing(spec.PREPROCESS_JOB, step_dir,
                                   {"data": self._input_path()}, spec.STEP.PREPROCESS)
        manifest = json.loads((Path(outputs["manifest"]) / "manifest.json").read_text())
        counts = {s: manifest["counts"][s]["total"] for s in ("train", "valid", "test")}
        self.echo(f"[{spec.STEP.PREPROCESS}] {len(manifest['classes'])} classes, {counts}, "
                  f"{len(manifest['skipped'])} skipped")
        return outputs

    def _features(self, step_dir: Path, data: dict) -> dict:
        """scripts/features.py: the backbone's features of train and valid, once."""
        outputs = self._processing(spec.FEATURES_JOB, step_dir,
                                   {"train": data["train"], "valid": data["valid"]},
                                   spec.STEP.FEATURES)
        meta = json.loads((Path(outputs["features"]) / "features.json").read_text())
        if meta.get("skipped"):
            self.echo(f"[{spec.STEP.FEATURES}] nothing to extract ({meta['skipped']})")
        else:
            shape = meta["arrays"]["train"]["shape"]
            self.echo(f"[{spec.STEP.FEATURES}] {shape[1]} training images x {shape[0]} view(s) "
                      f"and {meta['arrays']['valid']['shape'][1]} validation images, dim "
                      f"{meta['feature_dim']}, in {meta['seconds']}s ({meta['precision']})")
        return outputs

    def _static_hyperparameters(self) -> dict:
        return {hp: self.params[p] for hp, p in spec.STATIC_HYPERPARAMETERS.items()}

    def _train_job(self, job_dir: Path, data: dict, hps: dict, on_line=None, threads=None,
                   extra_args=(), mlflow_env: dict | None = None, channels: dict | None = None):
        channels = {**{c: Path(data[c]) for c in spec.TRAINING_CHANNELS},
                    **{c: Path(p) for c, p in (channels or {}).items()}}
        env, args = training_contract(channels, job_dir / "model", job_dir / "output",
                                      {**self._static_hyperparameters(), **hps})
        env.update(mlflow_env or {})
        extra_args = [*extra_args, "--tensorboard-dir", str(job_dir / "tensorboard")]
        return run_script("train.py", [*args, *extra_args], job_dir / "train.log", env=env,
                          threads=threads, on_line=on_line)

    def _mlflow_env(self, run_name: str, parent: str | None = None) -> dict:
        """What a training job needs to log its MLflow run (nothing without tracking)."""
        if not self.tracking_uri:
            return {}
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_RUN_NAME": run_name,
               "MLFLOW_EXPERIMENT_ID": self._mlflow_experiment()}
        if parent:
            env["MLFLOW_PARENT_RUN_ID"] = parent
        return env

    def _mlflow_experiment(self) -> str:
        if self._experiment is None:
            from .tracking import experiment_id

            self._experiment = experiment_id(self.tracking_uri, self.name, self.home)
        return self._experiment

    def _tune(self, step_dir: Path, data: dict, features: dict) -> dict:
        parallel = max(1, min(int(self.params["MaxParallelTuningJobs"]),
                              int(self.params["MaxTuningJobs"])))
        threads = max(1, cpu_count() // parallel)

        parent = None
        if self.tracking_uri:
            from .tracking import start_parent_run

            parent = start_parent_run(self.tracking_uri, self._mlflow_experiment(),
                                      f"{spec.STEP.TUNE} {self.result.execution_id}")

        fixed = {hp: self.params[p] for hp, p in spec.TUNING_HYPERPARAMETERS.items()}

        def run_trial(number, hps, on_line):
            return self._train_job(step_dir / f"trial-{number}", data, {**fixed, **hps},
                                   on_line, threads, ("--checkpoint-dir", ""),
                                   self._mlflow_env(f"trial-{number}", parent),
                                   channels={spec.FEATURES_CHANNEL: features["features"]})

        def on_trial(outcome):
            outcome.log_path = str(step_dir / f"trial-{outcome.number}" / "train.log")
            self.store.record_trial(self.result.execution_id, outcome.number, outcome.state,
                                    outcome.hyperparameters, outcome.value, outcome.intermediate,
                                    outcome.log_path)
            value = f"{outcome.value:.4f}" if outcome.value is not None else "-"
            self.echo(f"[{spec.STEP.TUNE}] trial {outcome.number}: {outcome.state}, "
                      f"{spec.OBJECTIVE_METRIC}={value}, {_fmt(outcome.hyperparameters)}")

        try:
            outcomes = tuning.tune(self.params, run_trial,
                                   n_trials=int(self.params["MaxTuningJobs"]),
                                   parallel=parallel, on_trial=on_trial)
        finally:
            if parent:
                from .tracking import end_parent_run

                end_parent_run(self.tracking_uri, parent)
        best = tuning.best(outcomes)
        if best is None:
            errors = [o.error for o in outcomes if o.error]
            reason = f" (first error: {errors[0]})" if errors else ""
            raise StepFailed(spec.STEP.TUNE, f"no tuning trial completed{reason}; see the trial "
                             f"logs in {step_dir}")
        self.echo(f"[{spec.STEP.TUNE}] best trial {best.number}: {spec.OBJECTIVE_METRIC}="
                  f"{best.value:.4f}, {_fmt(best.hyperparameters)}")
        return {"best": best.hyperparameters, "best_value": best.value, "trials": str(step_dir),
                "best_model": str(step_dir / f"trial-{best.number}" / "model")}

    def _train(self, step_dir: Path, data: dict, tuned: dict) -> dict:
        hps = {k: v for k, v in tuned["best"].items() if k != "epochs"}
        hps["epochs"] = self.params["Epochs"]
        hps.update({hp: self.params[p] for hp, p in spec.TRAIN_FINAL_HYPERPARAMETERS.items()})
        extra = ["--checkpoint-dir", str(step_dir / "checkpoints")]
        output_data = step_dir / "output" / "data"  # SM_OUTPUT_DATA_DIR: output.tar.gz in AWS
        for name, path in spec.TRAIN_FINAL_MONITORING.items():
            wanted = {"debugger-out": self.options.training_rules,
                      "profile-out": self.options.profiler}.get(name, False)
            if wanted:  # the same folders as in SageMaker, under this job's output data
                extra += [f"--{name}",
                          *map_paths([path], {spec.TRAINING_OUTPUT_DATA: output_data})]

        def on_line(line: str):
            if line.startswith("epoch="):
                self.echo(f"[{spec.STEP.TRAIN}] {line}")

        result = self._train_job(step_dir, data, hps, on_line, extra_args=extra,
                                 mlflow_env=self._mlflow_env(
                                     f"{spec.STEP.TRAIN} {self.result.execution_id}"),
                                 channels={spec.HEAD_CHANNEL: tuned["best_model"]})
        if result.returncode != 0:
            raise StepFailed(spec.STEP.TRAIN, f"{result.failure_reason} (log: {result.log_path})")
        archive = step_dir / "output" / "model.tar.gz"  # what SageMaker uploads
        with tarfile.open(archive, "w:gz") as tar:
            for item in sorted((step_dir / "model").iterdir()):
                tar.add(item, arcname=item.name)
        outputs = {"model_data": str(archive), "hyperparameters": hps,
                   "output_data": str(output_data)}
        run_file = output_data / RUN_ID_FILE
        if run_file.is_file():
            outputs["mlflow_run"] = json.loads(run_file.read_text())
        return outputs

    def _rules(self, step_dir: Path, model: dict) -> dict:
        """scripts/training_rules.py on TrainFinal's output data, as the cloud step runs it."""
        outputs = self._processing(spec.RULES_JOB, step_dir, {"training": model["output_data"]},
                                   spec.STEP.RULES)
        folder = Path(outputs["rules"])
        return {**outputs, "rules_file": str(folder / RULES_FILE),
                "profiler_report": str(folder / REPORT_FILE)}

    def _check_rules(self, step_dir: Path, rules: dict) -> bool:
        """No finding of a blocking rule (BlockingRules), as the cloud ConditionStep."""
        blocking = self._rules_report["blocking"]
        self.echo(f"[{spec.STEP.CHECK_RULES}] blocking rules fired: "
                  f"{blocking['fired'] or 'none'} (BlockingRules: "
                  f"{','.join(blocking['rules']) or 'none'})")
        return blocking["count"] == 0

    def _rules_fired(self, step_dir: Path, rules: dict):
        blocking = self._rules_report["blocking"]
        raise PipelineFailed(
            f"Training rule(s) {blocking['fired']} found issues in TrainFinal (they are in "
            f"BlockingRules) - the model was not registered. See {rules['rules_file']} and "
            f"TrainFinal's log.")

    def _evaluate(self, step_dir: Path, data: dict, model: dict) -> dict:
        outputs = self._processing(spec.EVALUATE_JOB, step_dir,
                                   {"model": model["model_data"], "valid": data["valid"],
                                    "test": data["test"]},
                                   spec.STEP.EVALUATE)
        folder = Path(outputs["evaluation"])
        return {**outputs, "report": str(folder / spec.EVALUATION_FILE),
                "validation": str(folder / spec.VALIDATION_FILE)}

    def _check(self, step_dir: Path, evaluation: dict) -> bool:
        """Validation accuracy >= AccuracyThreshold, as the cloud ConditionStep."""
        self.result.accuracy = _accuracy(evaluation["validation"])
        threshold = float(self.params["AccuracyThreshold"])
        passed = self.result.accuracy >= threshold
        self.echo(f"[{spec.STEP.CHECK}] validation accuracy {self.result.accuracy:.4f} "
                  f"{'>=' if passed else '<'} AccuracyThreshold {threshold}")
        return passed

    def _register(self, step_dir: Path, data: dict, tuned: dict, model: dict,
                  evaluation: dict, rules: dict | None) -> dict:
        manifest = json.loads((Path(data["manifest"]) / "manifest.json").read_text())
        # the registered artifact must outlive the execution's folder
        artifact = self.home / "models" / self.group / f"{self.result.execution_id}.tar.gz"
        artifact.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model["model_data"], artifact)
        package = LocalRegistry(self.home).register(
            self.group, str(artifact),
            metrics={**json.loads(Path(evaluation["report"]).read_text()),
                     "validation": json.loads(Path(evaluation["validation"]).read_text())},
            hyperparameters={**self._static_hyperparameters(), **model["hyperparameters"]},
            lineage={"pipeline": self.name, "execution": self.result.execution_id,
                     **({"mlflow_run_id": model["mlflow_run"]["run_id"]}
                        if model.get("mlflow_run") else {}),
                     "input": self.params["InputDataUrl"],
                     "data_fingerprint": manifest["fingerprint"],
                     "code_version": self.code_version},
            approval_status=self.params["ModelApprovalStatus"],
            metadata=self._version_metadata(evaluation, rules, model),
            description=f"{self.params['BaseModel']} from local execution "
                        f"{self.result.execution_id}")
        self.result.registered_version = package.version
        self.echo(f"[{spec.STEP.REGISTER}] {self.group} version {package.version} "
                  f"({package.approval_status})")
        return {"version": package.version, "model_data": str(artifact)}

    def _version_metadata(self, evaluation: dict, rules: dict | None, model: dict) -> dict:
        """What the cloud RegisterModel records as CustomerMetadataProperties, here too."""
        metadata = {"validation_accuracy": _accuracy(evaluation["validation"]),
                    "test_accuracy": _accuracy(evaluation["report"])}
        if rules is not None:
            report = self._rules_report
            if self.options.training_rules:
                metadata.update({spec.rule_metadata_key(v["rule"]): v["status"]
                                 for v in report["rules"]})
                metadata[spec.BLOCKING_FIRED_METADATA] = report["blocking"]["fired"] or "none"
            if self.options.profiler:
                metadata[spec.PROFILER_REPORT_METADATA] = rules["profiler_report"]
        if model.get("mlflow_run"):
            metadata[spec.MLFLOW_RUN_METADATA] = model["mlflow_run"]["run_id"]
        return metadata

    def _fail(self, step_dir: Path):
        raise PipelineFailed(
            f"Validation accuracy {self.result.accuracy} is below the AccuracyThreshold of "
            f"{self.params['AccuracyThreshold']} - the model was not registered.")


def _accuracy(report_path: str) -> float:
    return spec.accuracy_of(json.loads(Path(report_path).read_text()))


def _paths(outputs: dict) -> list[str]:
    keys = ("train", "valid", "test", "manifest", "features", "best_model", "model_data",
            "evaluation", "report", "validation", "rules_file", "output_data")
    return [outputs[k] for k in keys if k in outputs and outputs[k]]


def _fmt(hps: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in hps.items())


def summary(result: RunResult) -> str:
    lines = [f"execution {result.execution_id}: {result.status}"]
    lines.append(f"  {'step':<18} {'status':<10} {'seconds':>8}  note")
    for s in result.steps:
        note = f"cache hit ({s.cached_from})" if s.cached_from else s.detail
        lines.append(f"  {s.name:<18} {s.status:<10} {s.seconds:>8.1f}  {note}")
    if result.best_hyperparameters:
        lines.append(f"  best hyperparameters: {_fmt(result.best_hyperparameters)}")
    for v in result.rules:
        where = f" at step {v['step']}" if v["step"] is not None else ""
        lines.append(f"  rule {v['rule']:<26} {v['status']}{where}")
    if result.accuracy is not None:
        lines.append(f"  validation accuracy: {result.accuracy:.4f} (the gate)")
    if result.test_accuracy is not None:
        lines.append(f"  test accuracy: {result.test_accuracy:.4f} (registered)")
    if result.registered_version is not None:
        lines.append(f"  registered: version {result.registered_version}")
    for name, path in result.reports.items():
        lines.append(f"  {name}: {path}")
    if result.error:
        lines.append(f"  error: {result.error}")
    return "\n".join(lines)
