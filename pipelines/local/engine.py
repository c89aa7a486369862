"""Run a SageMaker Pipelines definition (its JSON) on this machine, without Docker or AWS.

The engine takes everything from the definition: the steps, their order (the steps each one's
arguments reference, and ``DependsOn``), their requests, the conditions and the branches they
choose. For each job step it resolves the step's ``Arguments`` into the request SageMaker would
receive (CreateProcessingJob, CreateTrainingJob, CreateHyperParameterTuningJob and each trial's
CreateTrainingJob, CreateModelPackage, CreateModel, CreateTransformJob), validates it against
botocore's input shape (:mod:`pipelines.shapes`: a request the API would refuse fails the step with that message),
saves it as ``request.json`` in the step's folder, and runs it (:mod:`.jobs`, :mod:`.tuning`,
the local registry). Properties (``Steps.X.…``) come from the Describe* response of what ran,
lists keyed by name as the SDK writes them. Objects live in the local object store
(``s3://BUCKET/KEY`` is ``<home>/s3/BUCKET/KEY``).

Caching follows SageMaker's rule: a step with ``CacheConfig.Enabled`` hits when the attributes
SageMaker keys its cache on are the same in the resolved request (:data:`CACHE_ATTRIBUTES`),
within ``ExpireAfter``; and, since local data changes under the same S3 URI, when the content
of its S3 inputs is the same too.

The engine knows no step of ours by name; :mod:`.presentation` adds the lines of the summary
that read our steps' reports.

Layout under the home folder::

    <home>/engine.sqlite                 executions, steps, trials, step cache
    <home>/registry.sqlite               the local model registry
    <home>/s3/<bucket>/<key>             the object store
    <home>/cache/                        downloads and rendered sample data
    <home>/pipelines/<name>/<execution>/<step>/   each step's request.json, job folders, log
    <home>/mlflow/                       MLflow runs, with --mlflow (mlflow.db, artifacts/)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from breedkit.contract import cpu_count
from pipelines import shapes
from pipelines.registry import LocalRegistry, sha256_of

from . import jobs, presentation, tuning
from .expressions import ResolveError, Resolver, Unsupported, is_expression
from .objectstore import LOCAL_ACCOUNT, LOCAL_REGION, ObjectStore, StoreError
from .store import Store

STEP_TYPES = ("Processing", "Training", "Tuning", "Condition", "RegisterModel", "Fail", "Model",
              "Transform")
# what SageMaker keys each step type's cache on (Pipelines' "Caching pipeline steps")
CACHE_ATTRIBUTES = {
    "Processing": ("AppSpecification", "Environment", "ProcessingInputs"),
    "Training": ("AlgorithmSpecification", "CheckpointConfig", "DebugHookConfig",
                 "DebugRuleConfigurations", "Environment", "HyperParameters",
                 "InputDataConfig"),
    "Tuning": ("HyperParameterTuningJobConfig", "TrainingJobDefinition",
               "TrainingJobDefinitions", "WarmStartConfig"),
}
JOB_NAMES = {"Processing": ("ProcessingJobName", 63), "Training": ("TrainingJobName", 63),
             "Tuning": ("HyperParameterTuningJobName", 32), "Model": ("ModelName", 63),
             "Transform": ("TransformJobName", 63)}  # the member, its longest
PARAMETER_TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": bool}
STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,255}")


class StepFailed(Exception):
    def __init__(self, step: str, message: str):
        super().__init__(f"{step} failed: {message}")
        self.step = step


class PipelineFailed(Exception):
    """The Fail step: the execution ends as Failed with this message."""


class DefinitionError(Exception):
    """The definition holds what the engine cannot run, or is not a definition."""


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
    comparison: str | None = None  # Evaluate's comparison with the approved version
    registered_version: int | None = None
    reports: dict = field(default_factory=dict)
    rules: list = field(default_factory=list)
    error: str | None = None


def all_steps(steps: list) -> list[dict]:
    """Every step, those in Condition steps' branches included."""
    found = []
    for step in steps:
        found.append(step)
        if step.get("Type") == "Condition":
            for branch in ("IfSteps", "ElseSteps"):
                found += all_steps(step.get("Arguments", {}).get(branch) or [])
    return found


def check_definition(definition: dict) -> None:
    """DefinitionError naming the first step type or expression the engine cannot run."""
    if not isinstance(definition, dict) or not isinstance(definition.get("Steps"), list):
        raise DefinitionError("not a pipeline definition (no Steps list)")
    names = set()
    for step in all_steps(definition["Steps"]):
        kind, name = step.get("Type"), step.get("Name")
        if not isinstance(name, str) or not STEP_NAME.fullmatch(name):
            raise DefinitionError(f"step name {name!r}: SageMaker takes 1-256 letters, digits, "
                                  f"'-' and '_' (and the engine makes a folder of it)")
        expire = (step.get("CacheConfig") or {}).get("ExpireAfter")
        if expire and _duration(expire) is None:
            raise DefinitionError(f"step {name}: CacheConfig.ExpireAfter {expire!r} is not an "
                                  f"ISO 8601 duration the engine reads (PnW, PnD, PTnH, ...)")
        if kind not in STEP_TYPES:
            raise DefinitionError(f"step {name}: type {kind} is not supported by the local "
                                  f"engine (supported: {', '.join(STEP_TYPES)})")
        if name in names:
            raise DefinitionError(f"two steps are named {name}")
        names.add(name)
        try:
            _check_functions(step.get("Arguments"))
        except Unsupported as exc:
            raise DefinitionError(f"step {name}: {exc} is not supported by the local engine"
                                  ) from None
    for step in all_steps(definition["Steps"]):
        for ref in _references(step):
            if ref not in names:
                raise DefinitionError(f"step {step['Name']} refers to step {ref}, which the "
                                      f"definition does not have")


def _check_functions(value) -> None:
    if isinstance(value, dict):
        if len(value) == 1 and str(next(iter(value))).startswith("Std:") and \
                not is_expression(value):
            raise Unsupported(f"pipeline function {next(iter(value))}")
        for item in value.values():
            _check_functions(item)
    elif isinstance(value, list):
        for item in value:
            _check_functions(item)


def _references(step: dict) -> set[str]:
    """The steps a step needs first: the ones its arguments read, and its DependsOn."""
    found = set(step.get("DependsOn") or [])

    def visit(value, nested=False):
        if isinstance(value, dict):
            ref = value.get("Get")
            if isinstance(ref, str) and ref.startswith("Steps.") and len(value) == 1:
                found.add(ref.split(".")[1])
            for key, item in value.items():
                if key not in ("IfSteps", "ElseSteps"):  # the branches' own needs are theirs
                    visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit(step.get("Arguments"))
    return found


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
MIN_FREE_MB = 512  # free space a job step needs to start under the home ($DOGBREED_MIN_FREE_MB)


class HomeError(Exception):
    """The home cannot take a new execution (a full disk, unwritable records): nothing ran."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``kill``, a service manager): handled as Ctrl-C is."""


@contextlib.contextmanager
def sigterm_stops():
    """While the engine runs, SIGTERM stops the execution as Ctrl-C does (recorded Stopped,
    the running job stopped with it); only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def min_free_bytes() -> int:
    try:
        return int(float(os.environ.get("DOGBREED_MIN_FREE_MB", MIN_FREE_MB)) * 2**20)
    except ValueError:
        return MIN_FREE_MB * 2**20


class LocalEngine:
    def __init__(self, home: str | os.PathLike, echo=print, tracking_uri: str | None = None):
        self.home = Path(home).expanduser().resolve()  # steps run in other folders
        self.echo = echo
        self.store = Store(self.home)
        self.objects = ObjectStore(self.home / "s3")
        self.tracking_uri = tracking_uri  # MLflow: runs of training jobs and tuning steps
        self._experiment = None

    # -- the execution --------------------------------------------------------------------

    def run(self, definition: dict, overrides: dict | None = None, *, pipeline_name: str,
            lineage: dict | None = None) -> RunResult:
        """Run ``definition`` with ``overrides`` of its parameters; ``lineage`` is recorded
        with a registered version (the input, its fingerprint, the code version)."""
        check_definition(definition)
        params = resolve_parameters(definition, overrides or {})
        try:
            for orphan in self.store.fail_orphans():
                self.echo(f"execution {orphan['id']} marked Failed: {orphan['error']}")
            execution_id = self.store.new_execution(pipeline_name, params)
        except (sqlite3.Error, OSError) as exc:  # nothing has run: one line, no execution
            raise HomeError(self._no_space() if self._out_of_space(exc) else
                            f"cannot write the engine's records under {self.home}: {exc}"
                            ) from None
        self.name = pipeline_name
        self.lineage = lineage or {}
        self.root = self.home / "pipelines" / pipeline_name / execution_id
        self.result = RunResult(execution_id, "Executing")
        self.described: dict[str, dict] = {}  # step name -> its Describe* response
        self.local: dict[str, dict] = {}  # step name -> what the engine knows besides
        self.property_files = {s["Name"]: {p["PropertyFileName"]: p for p in
                                           s.get("PropertyFiles") or []}
                               for s in all_steps(definition["Steps"])}
        self._files: dict[tuple, object] = {}
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        arn = (f"arn:aws:sagemaker:{LOCAL_REGION}:{LOCAL_ACCOUNT}:pipeline/"
               f"{pipeline_name.lower()}")
        self.resolver = Resolver(params, {
            "PipelineExecutionId": execution_id, "PipelineName": pipeline_name,
            "PipelineArn": arn, "PipelineExecutionArn": f"{arn}/execution/{execution_id}",
            "StartDateTime": started, "CurrentDateTime": started}, self._properties,
            self._property_file)
        self.presenter = presentation.Presenter(self)
        self.echo(f"local execution {execution_id} of {pipeline_name} (home {self.home})")
        try:
            with sigterm_stops():
                self._run_steps(list(definition["Steps"]))
            self.result.status = "Succeeded"
        except KeyboardInterrupt as exc:
            self.result.status, self.result.error = "Stopped", _stopped_by(exc)
        except (StepFailed, PipelineFailed) as exc:
            self.result.status, self.result.error = "Failed", str(exc)
        except sqlite3.Error as exc:  # the records cannot be written: a full disk, I/O errors
            return self._unrecorded(exc)
        except Exception as exc:  # an engine bug: record it, then let it surface
            self.result.status, self.result.error = "Failed", f"{type(exc).__name__}: {exc}"
            self.store.end_execution(execution_id, "Failed", self.result.error)
            raise
        try:
            self.store.end_execution(execution_id, self.result.status, self.result.error)
        except sqlite3.Error as exc:
            return self._unrecorded(exc)
        return self.result

    def _out_of_space(self, exc: Exception) -> bool:
        """Whether ``exc`` (an OSError, or sqlite's "database or disk is full" / "disk I/O
        error") comes of a full disk under the home."""
        return getattr(exc, "errno", None) in NO_SPACE or "full" in str(exc) or \
            free_bytes(self.home) < 64 * 2**20

    def _no_space(self) -> str:
        free = free_bytes(self.home) / 2**20
        return (f"no space left on device under {self.home} ({free:.0f} MB free): free some "
                f"(old executions are under {self.home / 'pipelines'}, downloads under "
                f"{self.home / 'cache'}) and run again; completed steps come from the cache")

    def _unrecorded(self, exc: sqlite3.Error) -> RunResult:
        """The engine's records cannot be written: say why in one line, and leave the reason
        where the next start finds it (the execution's lock file, written in place)."""
        reason = self._no_space() if self._out_of_space(exc) else \
            f"the engine's records under {self.home} cannot be written ({exc})"
        if self.result.error and self.result.error not in reason:
            reason = f"{reason}; before that: {self.result.error}"
        self.result.status, self.result.error = "Failed", reason
        try:
            self.store.end_execution(self.result.execution_id, "Failed", reason)
        except sqlite3.Error:
            self.store.leave_note(self.result.execution_id, reason)
            self.echo(f"error: {reason}. The execution is recorded as Failed at the next "
                      f"start.")
        return self.result

    def _run_steps(self, pending: list[dict]) -> None:
        """One step at a time, each once all the steps it needs have succeeded; a Condition
        step's chosen branch joins the queue."""
        done: set[str] = set()
        while pending:
            ready = next((s for s in pending if _references(s) <= done), None)
            if ready is None:
                waiting = {s["Name"]: sorted(_references(s) - done) for s in pending}
                raise StepFailed(pending[0]["Name"], f"waits for steps that never ran: "
                                 f"{waiting[pending[0]['Name']]}")
            pending.remove(ready)
            branch = self._step(ready)
            done.add(ready["Name"])
            pending = [*branch, *pending]

    def _step(self, step: dict) -> list[dict]:
        """Run one step: record it, resolve and validate its request, reuse the cache where
        the step allows, print progress. Returns the steps of a chosen branch."""
        name, kind = step["Name"], step["Type"]
        step_dir = self.root / name
        step_dir.mkdir(parents=True, exist_ok=True)
        log_path = step_dir / "step.log"
        self.store.start_step(self.result.execution_id, name, str(log_path))
        self.echo(f"[{name}] started")
        start = time.perf_counter()
        key = cached_from = None
        outputs: dict = {}
        branch: list[dict] = []
        try:
            if kind in ("Condition", "Fail"):
                branch = self._condition(step, step_dir) if kind == "Condition" else \
                    self._fail(step)
                outputs = {"properties": self.described.get(name, {})}
            else:
                request = self._request(step, step_dir)
                outputs["request"] = str(step_dir / "request.json")
                key = self._cache_key(step, request)
                hit = self._cached(step, key)
                if hit:
                    cached_from = hit["execution_id"]
                    self.described[name] = hit["outputs"]["properties"]
                    self.local[name] = hit["outputs"].get("local", {})
                    self.echo(f"[{name}] cache hit: reusing the outputs of execution "
                              f"{cached_from}")
                else:
                    if kind in ("Processing", "Training", "Tuning", "Transform"):
                        self._check_free_space(name)
                    runner = {"Processing": self._processing, "Training": self._training,
                              "Tuning": self._tuning, "RegisterModel": self._register,
                              "Model": self._model, "Transform": self._transform}[kind]
                    self.described[name] = runner(step, request, step_dir)
                outputs.update(properties=self.described[name], local=self.local.get(name, {}))
                if key and not hit:
                    self.store.remember(self.name, name, key, self.result.execution_id,
                                        outputs)
            self.presenter.after(step)
        except KeyboardInterrupt as exc:
            self._end(name, "Stopped", start, error=_stopped_by(exc))
            raise
        except (StepFailed, PipelineFailed) as exc:
            self._end(name, "Failed", start, error=str(exc))
            raise
        except (ResolveError, Unsupported, StoreError, jobs.JobSetupError) as exc:
            self._end(name, "Failed", start, error=str(exc))
            raise StepFailed(name, str(exc)) from None
        except OSError as exc:
            if not self._out_of_space(exc):
                self._end(name, "Failed", start, error=f"{type(exc).__name__}: {exc}")
                raise
            self._end(name, "Failed", start, error=self._no_space())
            raise StepFailed(name, self._no_space()) from None
        except sqlite3.Error:
            raise  # the records cannot be written: run() says so once
        except Exception as exc:
            self._end(name, "Failed", start, error=f"{type(exc).__name__}: {exc}")
            raise
        self._end(name, "Succeeded", start, outputs=outputs, key=key, cached_from=cached_from)
        return branch

    def _check_free_space(self, name: str) -> None:
        free, needed = free_bytes(self.home), min_free_bytes()
        if free < needed:
            raise StepFailed(name, f"only {free / 2**20:.0f} MB free under {self.home}, and a "
                                   f"job step needs {needed / 2**20:.0f} MB to start: free "
                                   f"some (old executions are under {self.home / 'pipelines'})"
                                   f" or set DOGBREED_MIN_FREE_MB, and run again")

    def _end(self, name, status, start, *, outputs=None, key=None, cached_from=None,
             error=None):
        seconds = time.perf_counter() - start
        self.store.end_step(self.result.execution_id, name, status, seconds, outputs=outputs,
                            cache_key=key, cached_from=cached_from, error=error)
        self.result.steps.append(StepRecord(name, status, seconds, cached_from, error or ""))
        self.echo(f"[{name}] {status.lower()} in {seconds:.1f}s" + (f": {error}" if error else ""))

    # -- requests -------------------------------------------------------------------------

    def _request(self, step: dict, step_dir: Path) -> dict:
        """The step's Arguments resolved into its API request, named as Pipelines names its
        jobs, validated against botocore's input shape and saved as request.json."""
        kind, name = step["Type"], step["Name"]
        request = self.resolver.resolve(step.get("Arguments") or {})
        if kind in JOB_NAMES:
            member, limit = JOB_NAMES[kind]
            request[member] = self._job_name(request.get(member) or "pipelines", name, limit)
        validate(shapes.OPERATIONS[kind], request, name, step_dir / "request.json")
        return request

    def _job_name(self, prefix: str, step: str, limit: int) -> str:
        digest = hashlib.sha256(f"{self.result.execution_id}/{step}".encode()).hexdigest()[:12]
        return f"{prefix[:limit - 13].rstrip('-')}-{digest}"

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{LOCAL_REGION}:{LOCAL_ACCOUNT}:{kind}/{name.lower()}"

    # -- the cache ------------------------------------------------------------------------

    def _cache_key(self, step: dict, request: dict) -> str | None:
        config = step.get("CacheConfig") or {}
        if not config.get("Enabled") or step["Type"] not in CACHE_ATTRIBUTES:
            return None
        keyed = {a: request.get(a) for a in CACHE_ATTRIBUTES[step["Type"]] if a in request}
        content = {uri: self.objects.fingerprint(uri) for uri in sorted(_s3_inputs(request))}
        material = {"type": step["Type"], "name": step["Name"], "request": keyed,
                    "content": content}
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()
                              ).hexdigest()

    def _cached(self, step: dict, key: str | None) -> dict | None:
        if not key:
            return None
        hit = self.store.cached(self.name, step["Name"], key)
        if not hit or "properties" not in hit["outputs"]:
            return None
        expire = _duration((step.get("CacheConfig") or {}).get("ExpireAfter"))
        if expire and hit.get("created_at"):
            if datetime.now(timezone.utc) - datetime.fromisoformat(hit["created_at"]) > expire:
                return None
        produced = _produced(step["Type"], hit["outputs"]["properties"])
        if not all(self.objects.objects(uri) for uri in produced):
            return None  # its outputs were removed from the store
        return hit

    # -- properties -----------------------------------------------------------------------

    def _properties(self, step: str) -> dict:
        if step not in self.described:
            raise ResolveError(f"step {step} has not run in this execution")
        return self.described[step]

    def _property_file(self, step: str, name: str):
        if (step, name) in self._files:
            return self._files[(step, name)]
        spec = self.property_files.get(step, {}).get(name)
        if spec is None:
            raise ResolveError(f"step {step} has no property file {name}")
        outputs = self._properties(step).get("ProcessingOutputConfig", {}).get("Outputs", [])
        found = [o for o in outputs if o.get("OutputName") == spec["OutputName"]]
        if not found:
            raise ResolveError(f"property file {name}: step {step} has no output "
                               f"{spec['OutputName']}")
        uri = f"{found[0]['S3Output']['S3Uri'].rstrip('/')}/{spec['FilePath']}"
        path = self.objects.path(uri)
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ResolveError(f"property file {name} of {step} ({uri}) cannot be read: "
                               f"{exc}") from None
        self._files[(step, name)] = document
        return document

    def property_file_path(self, step: str, name: str) -> Path | None:
        """Where a property file lies in the store (for the summary), None if unknown."""
        spec = self.property_files.get(step, {}).get(name)
        outputs = self.described.get(step, {}).get("ProcessingOutputConfig", {}).get(
            "Outputs", [])
        found = [o for o in outputs if spec and o.get("OutputName") == spec["OutputName"]]
        if not found:
            return None
        return self.objects.path(f"{found[0]['S3Output']['S3Uri'].rstrip('/')}/"
                                 f"{spec['FilePath']}")

    # -- step types -----------------------------------------------------------------------

    def _processing(self, step: dict, request: dict, step_dir: Path) -> dict:
        result = jobs.run_processing(request, step_dir / "job", self.objects,
                                     step_dir / "step.log")
        if result.returncode != 0:
            raise StepFailed(step["Name"], f"{result.failure_reason} (log: {result.log_path})")
        return {**request, "ProcessingJobArn": self._arn("processing-job",
                                                         request["ProcessingJobName"]),
                "ProcessingJobStatus": "Completed", "ExitMessage": ""}

    def _model(self, step: dict, request: dict, step_dir: Path) -> dict:
        """CreateModel: a record of the container (its model.tar.gz must be in the store);
        a transform job of this execution finds it by name."""
        container = request.get("PrimaryContainer") or {}
        if "ModelDataUrl" not in container:
            raise Unsupported("a model without PrimaryContainer.ModelDataUrl (a model package "
                              "or several containers) cannot run here")
        if not self.objects.path(container["ModelDataUrl"]).is_file():
            raise jobs.JobSetupError(f"the model {container['ModelDataUrl']} is not in the "
                                     f"local object store")
        return {**request, "ModelArn": self._arn("model", request["ModelName"])}

    def _transform(self, step: dict, request: dict, step_dir: Path) -> dict:
        """CreateTransformJob: pipelines/local/transform.py with the model's handlers."""
        model = next((d for d in self.described.values()
                      if d.get("ModelName") == request["ModelName"] and "ModelArn" in d), None)
        if model is None:
            raise jobs.JobSetupError(f"model {request['ModelName']} was not created in this "
                                     f"execution")
        source = request["TransformInput"]
        if source["DataSource"]["S3DataSource"].get("S3DataType") != "S3Prefix" or \
                source.get("SplitType", "None") != "None" or \
                source.get("CompressionType", "None") != "None":
            raise Unsupported("transform input: only S3Prefix data, SplitType None and no "
                              "compression run here (one image per object)")
        container = model["PrimaryContainer"]
        env = {**(container.get("Environment") or {}), **(request.get("Environment") or {}),
               "SM_OUTPUT_DIR": str(step_dir / "output")}
        script = Path(jobs.__file__).with_name("transform.py")
        result = jobs.run_script(script, [
            "--request", str(step_dir / "request.json"),
            "--model", str(self.objects.path(container["ModelDataUrl"])),
            "--store", str(self.objects.root), "--workdir", str(step_dir)],
            step_dir / "step.log", env=env, cwd=step_dir)
        if result.returncode != 0:
            raise StepFailed(step["Name"], f"{result.failure_reason} (log: {result.log_path})")
        return {**request, "TransformJobArn": self._arn("transform-job",
                                                        request["TransformJobName"]),
                "TransformJobStatus": "Completed"}

    def _training_job(self, request: dict, root: Path, log_path: Path, *, run_name: str,
                      parent: str | None = None, threads=None, on_line=None):
        result, artifacts = jobs.run_training(request, root, self.objects, log_path,
                                              env=self._mlflow_env(run_name, parent),
                                              threads=threads, on_line=on_line)
        described = {**request, **artifacts,
                     "TrainingJobArn": self._arn("training-job", request["TrainingJobName"]),
                     "TrainingJobStatus": "Completed" if result.returncode == 0 else "Failed",
                     "SecondaryStatus": "Completed" if result.returncode == 0 else "Failed",
                     "FinalMetricDataList": jobs.metrics_from_log(
                         log_path, request["AlgorithmSpecification"].get("MetricDefinitions"))}
        if result.failure_reason:
            described["FailureReason"] = result.failure_reason
        return result, described

    def _training(self, step: dict, request: dict, step_dir: Path) -> dict:
        def on_line(line: str):
            self.presenter.training_line(step["Name"], line)

        result, described = self._training_job(
            request, step_dir / "job", step_dir / "step.log", on_line=on_line,
            run_name=f"{step['Name']} {self.result.execution_id}")
        if result.returncode != 0:
            raise StepFailed(step["Name"], f"{result.failure_reason} (log: {result.log_path})")
        run = _mlflow_run(step_dir / "job")
        if run:
            self.local[step["Name"]] = {"mlflow_run": run}
        return described

    def _tuning(self, step: dict, request: dict, step_dir: Path) -> dict:
        name, config = step["Name"], request["HyperParameterTuningJobConfig"]
        definition = request.get("TrainingJobDefinition")
        if definition is None:
            raise Unsupported("tuning with TrainingJobDefinitions (several algorithms)")
        tuning_name = request["HyperParameterTuningJobName"]
        limits = config.get("ResourceLimits") or {}
        parallel = max(1, min(int(limits.get("MaxParallelTrainingJobs", 1)),
                              int(limits.get("MaxNumberOfTrainingJobs", 1))))
        threads = max(1, cpu_count() // parallel)
        metric = config["HyperParameterTuningJobObjective"]["MetricName"]
        parent = self._start_parent_run(f"{name} {self.result.execution_id}")
        jobs_by_number: dict[int, dict] = {}

        def run_trial(number, hps, on_line):
            trial_dir = step_dir / f"trial-{number}"
            trial = trial_request(definition, hps, metric,
                                  f"{tuning_name}-{number + 1:03d}-"
                                  f"{hashlib.sha256(f'{tuning_name}{number}'.encode()).hexdigest()[:8]}")
            validate("CreateTrainingJob", trial, f"{name} trial {number}",
                     trial_dir / "request.json")
            result, described = self._training_job(
                trial, trial_dir, trial_dir / "train.log", run_name=f"trial-{number}",
                parent=parent, threads=threads, on_line=on_line)
            jobs_by_number[number] = described
            return result

        def on_trial(outcome):
            outcome.log_path = str(step_dir / f"trial-{outcome.number}" / "train.log")
            shown = _shown(outcome.hyperparameters)
            self.store.record_trial(self.result.execution_id, name, outcome.number,
                                    outcome.state, shown, outcome.value, outcome.intermediate,
                                    outcome.log_path)
            value = f"{outcome.value:.4f}" if outcome.value is not None else "-"
            self.echo(f"[{name}] trial {outcome.number}: {outcome.state}, {metric}={value}, "
                      f"{presentation.fmt(shown)}")

        try:
            outcomes = tuning.tune(config, definition["AlgorithmSpecification"].get(
                "MetricDefinitions"), run_trial, on_trial=on_trial)
        finally:
            self._end_parent_run(parent)
        direction = config["HyperParameterTuningJobObjective"].get("Type", "Maximize")
        best = tuning.best(outcomes, direction)
        if best is None:
            errors = [o.error for o in outcomes if o.error]
            reason = f" (first error: {errors[0]})" if errors else ""
            raise StepFailed(name, f"no tuning trial completed{reason}; see the trial logs in "
                             f"{step_dir}")
        best_job = jobs_by_number[best.number]
        summaries = [{"TrainingJobName": jobs_by_number[o.number]["TrainingJobName"],
                      "TrainingJobArn": jobs_by_number[o.number]["TrainingJobArn"],
                      "TunedHyperParameters": dict(o.hyperparameters),
                      "TrainingJobStatus": {"Failed": "Failed"}.get(o.state, o.state),
                      "FinalHyperParameterTuningJobObjectiveMetric": {
                          "Type": direction, "MetricName": metric, "Value": o.value}}
                     for o in outcomes if o.number in jobs_by_number and o.value is not None]
        summaries.sort(key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"],
                       reverse=direction == "Maximize")
        self.echo(f"[{name}] best trial {best.number}: {metric}={best.value:.4f}, "
                  f"{presentation.fmt(_shown(best.hyperparameters))}")
        counts = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0,
                  "Stopped": 0}
        for o in outcomes:
            counts[{"Failed": "NonRetryableError"}.get(o.state, o.state)] += 1
        return {**request,
                "HyperParameterTuningJobArn": self._arn("hyper-parameter-tuning-job",
                                                        tuning_name),
                "HyperParameterTuningJobStatus": "Completed",
                "TrainingJobStatusCounters": counts,
                # as ListTrainingJobsForHyperParameterTuningJob, best first (the SDK's
                # get_top_model_s3_uri reads TrainingJobSummaries[k])
                "TrainingJobSummaries": summaries,
                "BestTrainingJob": {
                    "TrainingJobName": best_job["TrainingJobName"],
                    "TrainingJobArn": best_job["TrainingJobArn"],
                    "TunedHyperParameters": dict(best.hyperparameters),
                    "TrainingJobStatus": "Completed", "ObjectiveStatus": "Succeeded",
                    "FinalHyperParameterTuningJobObjectiveMetric": {
                        "Type": direction, "MetricName": metric, "Value": best.value}}}

    def _condition(self, step: dict, step_dir: Path) -> list[dict]:
        arguments = step.get("Arguments") or {}
        results = [self.resolver.condition(c) for c in arguments.get("Conditions") or []]
        outcome = all(held for held, _ in results)
        self.described[step["Name"]] = {"Outcome": str(outcome).lower()}
        for held, text in results:
            self.echo(f"[{step['Name']}] {text}: {str(held).lower()}")
        return list(arguments.get("IfSteps" if outcome else "ElseSteps") or [])

    def _fail(self, step: dict) -> list:
        message = self.resolver.resolve((step.get("Arguments") or {}).get("ErrorMessage", ""))
        self.described[step["Name"]] = {"ErrorMessage": message}
        raise PipelineFailed(str(message))

    def _register(self, step: dict, request: dict, step_dir: Path) -> dict:
        """CreateModelPackage into the local registry: the model's archive is copied out of
        the execution (it must outlive it), with the version's metrics and metadata. An
        archive already registered in the group (a rerun whose steps all came from the cache)
        is not registered again: the step reports that version."""
        (container, *_) = request["InferenceSpecification"]["Containers"]
        model_uri = container["ModelDataUrl"]
        group = request["ModelPackageGroupName"]
        artifact = self.home / "models" / group / f"{self.result.execution_id}-{step['Name']}.tar.gz"
        model_path = self.objects.path(model_uri)
        if not model_path.is_file():
            raise jobs.JobSetupError(f"the model {model_uri} is not in the local object store "
                                     f"({model_path})")
        registry = LocalRegistry(self.home)
        digest = sha256_of(model_path)
        known = registry.find_artifact(group, digest)
        if known is not None:
            return self._registered(step, known, False)
        artifact.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model_path, artifact)
        quality = request.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics")
        metrics = {}
        if quality:
            try:
                metrics = json.loads(self.objects.path(quality["S3Uri"]).read_text())
            except (OSError, ValueError) as exc:
                raise jobs.JobSetupError(f"ModelQuality statistics {quality['S3Uri']} cannot "
                                         f"be read from the local object store: {exc}") from None
        baseline = self._drift_baseline(request, artifact)
        training = self._trained(model_uri)
        local = self.local.get(training, {}) if training else {}
        metadata = dict(request.get("CustomerMetadataProperties") or {})
        lineage = {"pipeline": self.name, "execution": self.result.execution_id,
                   "model_data_url": model_uri, **self.lineage}
        if training:
            lineage["training_job"] = self.described[training]["TrainingJobName"]
        if baseline:
            lineage["drift_baseline"] = baseline
        paths = self._local_paths(metadata)
        if paths:  # what metadata names in the object store (reports), as files on this disk
            lineage["local_paths"] = paths
        if local.get("mlflow_run"):
            lineage["mlflow_run_id"] = local["mlflow_run"]["run_id"]
            metadata.setdefault("mlflow_run", local["mlflow_run"]["run_id"])
        package, created = registry.register_once(
            group, str(artifact), sha256=digest, metrics=metrics,
            hyperparameters=_natural(self.described[training].get("HyperParameters", {}))
            if training else {},
            lineage=lineage, approval_status=request.get("ModelApprovalStatus",
                                                         "PendingManualApproval"),
            metadata=metadata, description=request.get("ModelPackageDescription", ""))
        if not created:  # a parallel run registered the same archive meanwhile
            artifact.unlink()
            if baseline:
                Path(baseline).unlink(missing_ok=True)
        return self._registered(step, package, created)

    def _local_paths(self, metadata: dict) -> dict:
        """The files of the metadata values that are URIs of the local object store."""
        found = {}
        for key, value in metadata.items():
            if isinstance(value, str) and value.startswith("s3://"):
                try:
                    path = self.objects.path(value)
                except StoreError:  # not a key of ours (a ".." part)
                    continue
                if path.is_file():
                    found[key] = str(path)
        return found

    def _drift_baseline(self, request: dict, artifact: Path) -> str | None:
        """The version's drift baseline (DriftCheckBaselines' ModelDataQuality statistics),
        copied beside its archive: what ``pipelines.monitor`` judges its traffic against."""
        source = request.get("DriftCheckBaselines", {}).get("ModelDataQuality", {}) \
            .get("Statistics")
        if not source:
            return None
        path = self.objects.path(source["S3Uri"])
        if not path.is_file():
            raise jobs.JobSetupError(f"the drift baseline {source['S3Uri']} is not in the local "
                                     f"object store ({path})")
        copy = artifact.with_name(artifact.name.removesuffix(".tar.gz") + "-baseline.json")
        shutil.copy2(path, copy)
        return str(copy)

    def _registered(self, step: dict, package, created: bool) -> dict:
        """The RegisterModel step's properties for ``package``; says what happened."""
        group = package.group
        self.result.registered_version = package.version
        if created:
            self.echo(f"[{step['Name']}] {group} version {package.version} "
                      f"({package.approval_status})")
        else:
            self.echo(f"[{step['Name']}] this model archive is already registered as {group} "
                      f"version {package.version} ({package.approval_status}): not registered "
                      f"again")
        return {"ModelPackageArn": self._arn("model-package", f"{group}/{package.version}"),
                "ModelPackageGroupName": group, "ModelPackageVersion": package.version,
                "ModelApprovalStatus": package.approval_status, "ModelPackageStatus":
                    "Completed", "ModelDataUrl": package.model_data}

    def _trained(self, model_uri: str) -> str | None:
        """The training step of this execution whose model is ``model_uri``."""
        for name, described in self.described.items():
            if described.get("ModelArtifacts", {}).get("S3ModelArtifacts") == model_uri:
                return name
        return None

    # -- MLflow ---------------------------------------------------------------------------

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

    def _start_parent_run(self, name: str) -> str | None:
        if not self.tracking_uri:
            return None
        from .tracking import start_parent_run

        return start_parent_run(self.tracking_uri, self._mlflow_experiment(), name)

    def _end_parent_run(self, parent: str | None) -> None:
        if parent:
            from .tracking import end_parent_run

            end_parent_run(self.tracking_uri, parent)


# -- helpers --------------------------------------------------------------------------------

def resolve_parameters(definition: dict, overrides: dict) -> dict:
    """The execution's parameter values: the definition's defaults, then ``overrides``,
    each of its parameter's Type."""
    declared = {p["Name"]: p for p in definition.get("Parameters") or []}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise DefinitionError(f"the definition has no parameter {', '.join(unknown)} (it has: "
                              f"{', '.join(declared) or 'none'})")
    values = {}
    for name, p in declared.items():
        value = overrides.get(name, p.get("DefaultValue"))
        if value is None:
            raise DefinitionError(f"parameter {name} has no default: give it with --param "
                                  f"{name}=VALUE")
        kind = PARAMETER_TYPES.get(p.get("Type", "String"))
        if kind is None:
            raise DefinitionError(f"parameter {name}: type {p.get('Type')} is not supported")
        try:
            if kind is bool and isinstance(value, str):
                value = {"true": True, "false": False}[value.strip().lower()]
            values[name] = kind(value)
        except (KeyError, TypeError, ValueError):
            raise DefinitionError(f"parameter {name} must be {p.get('Type')}, got {value!r}"
                                  ) from None
    return values


def validate(operation: str, request: dict, step: str, path: Path) -> None:
    """Save the request; StepFailed with botocore's findings if the API would refuse it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(request, indent=1, sort_keys=True, default=str) + "\n")
    problems = shapes.validate_arguments(operation, request)
    if problems:
        raise StepFailed(step, f"SageMaker would refuse its {operation} request ({path}): "
                         + "; ".join(problems))


def trial_request(definition: dict, hyperparameters: dict, metric: str, name: str) -> dict:
    """One tuning trial's CreateTrainingJob request, as the tuning job makes it."""
    request = {key: definition[key] for key in (
        "AlgorithmSpecification", "RoleArn", "InputDataConfig", "OutputDataConfig",
        "StoppingCondition", "VpcConfig", "EnableNetworkIsolation",
        "EnableInterContainerTrafficEncryption", "EnableManagedSpotTraining",
        "CheckpointConfig", "Environment", "RetryStrategy") if key in definition}
    resources = definition.get("ResourceConfig") or definition.get(
        "HyperParameterTuningResourceConfig") or {}
    request["ResourceConfig"] = {k: v for k, v in resources.items()
                                 if k in ("InstanceType", "InstanceCount", "VolumeSizeInGB",
                                          "VolumeKmsKeyId")}
    request["HyperParameters"] = {**(definition.get("StaticHyperParameters") or {}),
                                  **hyperparameters, "_tuning_objective_metric": metric}
    request["TrainingJobName"] = name
    return request


# a FrameworkProcessor's own inputs: their keys carry a hash of the code's content already (the
# SDK re-packs the same code with a new gzip timestamp at every build)
CODE_INPUTS = ("code", "entrypoint")


def _s3_inputs(request: dict) -> set[str]:
    """The data a job reads (its code left out), whose content the cache key covers."""
    found = set()
    for item in request.get("ProcessingInputs") or []:
        if "S3Input" in item and item.get("InputName") not in CODE_INPUTS:
            found.add(item["S3Input"]["S3Uri"])
    definition = request.get("TrainingJobDefinition") or request
    for channel in definition.get("InputDataConfig") or []:
        source = channel.get("DataSource", {}).get("S3DataSource")
        if source:
            found.add(source["S3Uri"])
    return found


def _produced(kind: str, described: dict) -> list[str]:
    """What a cached step's outputs are, to check they are still in the store."""
    if kind == "Processing":
        return [o["S3Output"]["S3Uri"] for o in
                described.get("ProcessingOutputConfig", {}).get("Outputs", [])]
    if kind == "Training":
        return [described["ModelArtifacts"]["S3ModelArtifacts"]]
    if kind == "Tuning":
        path = described["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"]
        return [f"{path.rstrip('/')}/{described['BestTrainingJob']['TrainingJobName']}/output/"
                f"model.tar.gz"]
    return []


def _mlflow_run(job_root: Path) -> dict | None:
    from breedkit.tracking import RUN_ID_FILE

    path = job_root / "opt" / "ml" / "output" / "data" / RUN_ID_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _shown(hyperparameters: dict) -> dict:
    """Tuned values as the job sees them (the training toolkit JSON-decodes them)."""
    return {k: _decode(v) for k, v in hyperparameters.items()}


def _decode(value):
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _natural(hyperparameters: dict) -> dict:
    """A training job's own hyperparameters (not the SDK's), JSON-decoded twice where the SDK
    encoded a tuned categorical value ("\\"16\\"")."""
    out = {}
    for key, value in hyperparameters.items():
        if key.startswith(("sagemaker_", "_")):
            continue
        value = _decode(value)
        if isinstance(value, str):
            value = _decode(value) if re.fullmatch(r"-?[0-9.eE+-]+", value) else value
        out[key] = value
    return out


def _duration(text: str | None) -> timedelta | None:
    """An ISO 8601 duration of weeks, days, hours, minutes, seconds (P30D, PT12H, P2W), any
    case; None if other (months and years have no fixed length)."""
    match = re.fullmatch(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?",
                         (text or "").upper())
    if not text or not match or text.upper() in ("P", "PT"):
        return None
    weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


def _stopped_by(exc: KeyboardInterrupt) -> str:
    return "stopped by SIGTERM" if isinstance(exc, Terminated) else \
        "stopped by the user (Ctrl-C)"


def summary(result: RunResult) -> str:
    return presentation.summary(result)
