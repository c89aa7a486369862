"""What the local engine prints of our own build pipeline's steps, and its summary.

Presentation only: the engine runs any definition from its JSON; here, by step name
(pipelines.spec.STEP), what the person at the terminal wants to read once a step of ours is
done: Preprocess's counts, the Features step's arrays, each training rule's verdict, the two
accuracies, where the reports are. A step of another name, or a report that is not there,
prints nothing more.
"""

from __future__ import annotations

import json
from pathlib import Path

from breedkit.rulespec import REPORT_FILE, RULES_FILE
from pipelines import spec


def fmt(hps: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in hps.items())


class Presenter:
    def __init__(self, engine):
        self.engine = engine
        self.result = engine.result
        self.echo = engine.echo

    def output(self, step: str, name: str) -> Path | None:
        """The folder of a processing step's output in the object store."""
        described = self.engine.described.get(step, {})
        for item in described.get("ProcessingOutputConfig", {}).get("Outputs", []):
            if item.get("OutputName") == name:
                return self.engine.objects.path(item["S3Output"]["S3Uri"])
        return None

    def training_line(self, step: str, line: str) -> None:
        if line.startswith("epoch="):
            self.echo(f"[{step}] {line}")

    def after(self, step: dict) -> None:
        """Lines and summary fields from a step that succeeded (run or taken from the
        cache)."""
        name = step["Name"]
        try:
            if step["Type"] == "Tuning":
                best = self.engine.described[name]["BestTrainingJob"]["TunedHyperParameters"]
                self.result.best_hyperparameters = {k: _decode(v) for k, v in best.items()}
            if step["Type"] == "Transform":  # where the records are, here and as S3 names them
                uri = self.engine.described[name]["TransformOutput"]["S3OutputPath"]
                folder = self.engine.objects.path(uri)
                records = sum(1 for _ in folder.rglob("*.out")) if folder.is_dir() else 0
                self.result.reports["transform_output"] = str(folder)
                self.echo(f"[{name}] {records} records in {uri} ({folder})")
            handler = {spec.STEP.PREPROCESS: self._preprocess,
                       spec.STEP.FEATURES: self._features,
                       spec.STEP.RULES: self._rules, spec.STEP.EVALUATE: self._evaluate,
                       spec.STEP.CHECK_RULES: self._check_rules,
                       spec.STEP.CHECK: self._check}.get(name)
            if handler:
                handler(name)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass  # a report of another shape: nothing to add

    def _preprocess(self, name: str) -> None:
        manifest = json.loads((self.output(name, "manifest") / "manifest.json").read_text())
        counts = {s: manifest["counts"][s]["total"] for s in ("train", "valid", "test")}
        self.echo(f"[{name}] {len(manifest['classes'])} classes, {counts}, "
                  f"{len(manifest['skipped'])} skipped")

    def _features(self, name: str) -> None:
        meta = json.loads((self.output(name, "features") / "features.json").read_text())
        if meta.get("skipped"):
            self.echo(f"[{name}] nothing to extract ({meta['skipped']})")
            return
        shape = meta["arrays"]["train"]["shape"]
        self.echo(f"[{name}] {shape[1]} training images x {shape[0]} view(s) and "
                  f"{meta['arrays']['valid']['shape'][1]} validation images, dim "
                  f"{meta['feature_dim']}, in {meta['seconds']}s ({meta['precision']})")

    def _rules(self, name: str) -> None:
        folder = self.output(name, "rules")
        report = json.loads((folder / RULES_FILE).read_text())
        if report.get("rules"):
            self.result.rules = report["rules"]
            for v in self.result.rules:
                where = f" at step {v['step']}" if v["step"] is not None else ""
                self.echo(f"[{name}] {v['rule']}: {v['status']}{where}"
                          + (f" ({v['message']})" if v["status"] == "Error" else ""))
        if (folder / REPORT_FILE).is_file():
            self.result.reports["profiler_report"] = str(folder / REPORT_FILE)

    def _evaluate(self, name: str) -> None:
        folder = self.output(name, "evaluation")
        evaluation = json.loads((folder / spec.EVALUATION_FILE).read_text())
        self.result.test_accuracy = spec.accuracy_of(evaluation)
        if evaluation.get("comparison"):
            self.result.comparison = evaluation["comparison_summary"]
            self.echo(f"[{name}] against the approved version: {self.result.comparison}")
        self.result.accuracy = spec.accuracy_of(
            json.loads((folder / spec.VALIDATION_FILE).read_text()))
        self.result.reports["evaluation"] = str(folder / spec.EVALUATION_FILE)
        self.result.reports["confusion_matrix"] = str(folder / "confusion_matrix.png")
        if (folder / spec.EVALUATION_REPORT_FILE).is_file():
            self.result.reports["evaluation_report"] = str(folder / spec.EVALUATION_REPORT_FILE)

    def _check_rules(self, name: str) -> None:
        path = self.engine.property_file_path(spec.STEP.RULES, spec.RULES_REPORT)
        blocking = json.loads(path.read_text())["blocking"]
        self.echo(f"[{name}] blocking rules fired: {blocking['fired'] or 'none'} "
                  f"(BlockingRules: {','.join(blocking['rules']) or 'none'})")

    def _check(self, name: str) -> None:
        threshold = self.engine.resolver.parameters.get("AccuracyThreshold")
        passed = self.engine.described[name]["Outcome"] == "true"
        if self.result.accuracy is not None:
            self.echo(f"[{name}] validation accuracy {self.result.accuracy:.4f} "
                      f"{'>=' if passed else '<'} AccuracyThreshold {threshold}")


def _decode(value):
    try:
        value = json.loads(value)
    except (TypeError, ValueError):
        return value
    if isinstance(value, str):  # a categorical value the SDK wrote as "\"16\""
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def summary(result) -> str:
    lines = [f"execution {result.execution_id}: {result.status}"]
    lines.append(f"  {'step':<27} {'status':<10} {'seconds':>8}  note")
    for s in result.steps:
        note = f"cache hit ({s.cached_from})" if s.cached_from else s.detail
        lines.append(f"  {s.name:<27} {s.status:<10} {s.seconds:>8.1f}  {note}")
    if result.best_hyperparameters:
        lines.append(f"  best hyperparameters: {fmt(result.best_hyperparameters)}")
    for v in result.rules:
        where = f" at step {v['step']}" if v["step"] is not None else ""
        lines.append(f"  rule {v['rule']:<26} {v['status']}{where}")
    if result.accuracy is not None:
        lines.append(f"  validation accuracy: {result.accuracy:.4f} (the gate)")
    if result.test_accuracy is not None:
        lines.append(f"  test accuracy: {result.test_accuracy:.4f} (registered)")
    if result.comparison:
        lines.append(f"  against the approved version: {result.comparison}")
    if result.registered_version is not None:
        lines.append(f"  registered: version {result.registered_version}")
    for name, path in result.reports.items():
        lines.append(f"  {name}: {path}")
    if result.error:
        lines.append(f"  error: {result.error}")
    return "\n".join(lines)
