"""Check a SageMaker Pipelines definition against botocore's request shapes.

SageMaker Pipelines runs a job step by calling the SageMaker API with the step's
``Arguments`` as the request (Pipelines adds the job name):

    Processing    -> CreateProcessingJob
    Training      -> CreateTrainingJob
    Tuning        -> CreateHyperParameterTuningJob
    RegisterModel -> CreateModelPackage
    Model         -> CreateModel
    Transform     -> CreateTransformJob

moto accepts any definition, so this module does what the real service would: it walks each
job step's Arguments together with the operation's input shape from botocore's ``sagemaker``
service model and reports what SageMaker would reject.

Pipeline expressions
    A dict with exactly one key among :data:`EXPRESSION_KEYS` (``Get``, ``Std:Join``,
    ``Std:JsonGet`` -- the only functions sagemaker 2.x emits) is an expression, resolved by
    Pipelines at run time. Whatever it contains (a ``Std:Join`` of ``Get`` s ...) is one value.

    * Standing for a scalar member it is replaced by a placeholder of the member's type that
      meets the member's constraints, so the placeholder never causes a problem. Its type is
      checked the way CreatePipeline does ("Cannot assign property reference
      [Parameters.X] to argument of type [String]", aws/sagemaker-python-sdk#4867): a
      ``Get`` of a pipeline parameter has the parameter's Type, a ``Get`` of a step property
      has the type of that member of the step's Describe* response, ``Execution.*`` and
      ``PipelineExperimentConfig.*`` are strings, ``Std:Join`` is a string and
      ``Std:JsonGet`` is taken as any scalar. An Integer where a float is wanted is accepted.
      Where a ``Get`` names a parameter with a DefaultValue, that default is also checked
      against the member's constraints (it is what an execution without overrides sends).
    * Standing for a structure, list or map it is reported: Pipelines fills in values, and no
      documentation or SDK code we found substitutes whole structures (a parameter where a
      list is wanted fails CreatePipeline with "Expecting start of Json Array",
      aws/sagemaker-python-sdk#2345).

Checks
    botocore's :class:`~botocore.validate.ParamValidator` (required and unknown members,
    types, minimum lengths and values) plus what it leaves out and SageMaker enforces: string
    maximum length, string ``pattern``, enum membership, list and map maximum length, numeric
    maximum, and booleans where numbers are wanted (``True`` is an ``int`` to Python).

    botocore's patterns are Java regexes matched against the whole value; Python's
    :func:`re.fullmatch` agrees for all but a few (``\\p{L}`` classes, surrogate ranges).
    Those are not checked; the shapes skipped so far are recorded in
    :data:`SKIPPED_PATTERNS`.

Problems are strings ``"<step>: <path in Arguments>: <what is wrong>"``, e.g.
``"TrainFinal: HyperParameters.epochs: expected string, got int"``.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from typing import Any, Iterator

import botocore.session
from botocore.model import Shape
from botocore.validate import ParamValidator

#: Keys that make a one-key dict a Pipelines expression.
EXPRESSION_KEYS = frozenset({"Get", "Std:Join", "Std:JsonGet"})

#: Step Type -> the SageMaker operation Pipelines calls with the step's Arguments.
OPERATIONS = {
    "Processing": "CreateProcessingJob",
    "Training": "CreateTrainingJob",
    "Tuning": "CreateHyperParameterTuningJob",
    "RegisterModel": "CreateModelPackage",
    "Model": "CreateModel",
    "Transform": "CreateTransformJob",
}

#: Step types that make no API request of their own (nothing to validate).
NO_REQUEST = frozenset({"Condition", "Fail"})

#: Operation -> the name member Pipelines fills in (CreateModelPackage takes the group name
#: from the Arguments).
JOB_NAME_MEMBERS = {
    "CreateProcessingJob": "ProcessingJobName",
    "CreateTrainingJob": "TrainingJobName",
    "CreateHyperParameterTuningJob": "HyperParameterTuningJobName",
    "CreateModel": "ModelName",
    "CreateTransformJob": "TransformJobName",
}

#: Step Type -> the response shapes its properties (``Steps.<name>.…``) come from, as in
#: sagemaker.workflow.steps.
PROPERTY_SHAPES = {
    "Processing": ("DescribeProcessingJobResponse",),
    "Training": ("DescribeTrainingJobResponse",),
    "Tuning": ("DescribeHyperParameterTuningJobResponse",
               "ListTrainingJobsForHyperParameterTuningJobResponse"),
    "RegisterModel": ("DescribeModelPackageOutput",),
    "Model": ("DescribeModelOutput",),
    "Transform": ("DescribeTransformJobResponse",),
}

#: Pipeline parameter Type -> the value kind it has.
PARAMETER_KINDS = {"String": "string", "Integer": "integer", "Float": "float",
                   "Boolean": "boolean"}

#: botocore shape type -> the value kind a member of that type takes.
SHAPE_KINDS = {"string": "string", "integer": "integer", "long": "integer",
               "float": "float", "double": "float", "boolean": "boolean",
               "timestamp": "timestamp", "blob": "string"}

#: Shapes whose pattern was skipped because Python's re cannot compile it: name -> pattern.
SKIPPED_PATTERNS: dict[str, str] = {}

_PLACEHOLDER_NAME = "pipelines-placeholder"
_PROPERTY_TOKEN = re.compile(r"\.?([A-Za-z0-9_]+)|\[(?:'([^']*)'|\"([^\"]*)\"|(\d+))\]")
_TYPE_NAMES = {"str": "string", "int": "integer", "float": "number", "Decimal": "number",
               "bool": "boolean", "dict": "object", "list": "list", "tuple": "list",
               "datetime": "timestamp"}


@functools.lru_cache(maxsize=1)
def service_model():
    """botocore's model of the ``sagemaker`` service."""
    return botocore.session.get_session().get_service_model("sagemaker")


def input_shape(operation: str) -> Shape:
    return service_model().operation_model(operation).input_shape


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str):
    try:
        return re.compile(pattern)
    except re.error:
        return None


def is_expression(value: Any) -> bool:
    """A one-key dict keyed by an expression function (so a map whose only key is "Get"
    would be taken for one, as Pipelines presumably does too)."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in EXPRESSION_KEYS


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _child(path: str, member: str) -> str:
    return f"{path}.{member}" if path else member


# ----------------------------------------------------------------------------------------
# Walking a definition
# ----------------------------------------------------------------------------------------

def iter_steps(definition: dict) -> Iterator[dict]:
    """Every step, including those nested in Condition steps' IfSteps / ElseSteps."""
    def walk(steps):
        for step in steps:
            yield step
            arguments = step.get("Arguments") or {}
            if step.get("Type") == "Condition":
                for branch in ("IfSteps", "ElseSteps"):
                    yield from walk(arguments.get(branch) or [])
    yield from walk(definition.get("Steps", []))


def job_steps(definition: dict) -> Iterator[tuple[str, str, dict]]:
    """``(name, operation, arguments)`` for each step with a request to check."""
    for step in iter_steps(definition):
        operation = OPERATIONS.get(step.get("Type"))
        if operation:
            yield step["Name"], operation, step.get("Arguments") or {}


def validate_definition(definition: dict) -> list[str]:
    """Problems SageMaker would find in the job steps of ``definition`` (empty when none)."""
    parameters = {p["Name"]: p for p in definition.get("Parameters", [])}
    step_types = {s["Name"]: s.get("Type") for s in iter_steps(definition)}
    problems = []
    for step in iter_steps(definition):
        kind = step.get("Type")
        if kind in OPERATIONS:
            problems += validate_arguments(OPERATIONS[kind], step.get("Arguments") or {},
                                           step=step["Name"], parameters=parameters,
                                           step_types=step_types)
        elif kind not in NO_REQUEST:
            problems.append(f"{step.get('Name')}: step type {kind!r} has no known request "
                            "shape, not checked")
    return problems


def validate_arguments(operation: str, arguments: dict, *, step: str = "",
                       parameters: dict | None = None,
                       step_types: dict | None = None) -> list[str]:
    """Problems in one step's ``arguments`` as the request of ``operation``.

    ``parameters`` (name -> the definition's parameter entry) and ``step_types`` (step name ->
    Type) let the types of ``Get`` references be checked; a reference to a parameter or step
    not in them is reported. Left out (None), such references are taken as any scalar.
    """
    return _StepValidator(operation, step, parameters, step_types).run(arguments)


# ----------------------------------------------------------------------------------------
# One step
# ----------------------------------------------------------------------------------------

class _StepValidator:
    def __init__(self, operation, step, parameters, step_types):
        self.operation = operation
        self.step = step
        self.parameters = parameters
        self.step_types = step_types
        self.problems: list[str] = []
        # Paths where an expression stands for a container: ParamValidator's complaints at
        # or under them repeat the problem already reported there.
        self.container_expressions: list[str] = []

    def report(self, path: str, message: str) -> None:
        where = ": ".join(part for part in (self.step, path) if part)
        self.problems.append(f"{where}: {message}" if where else message)

    def run(self, arguments: dict) -> list[str]:
        shape = input_shape(self.operation)
        request = dict(arguments)
        name_member = JOB_NAME_MEMBERS.get(self.operation)
        if name_member and name_member not in request:
            request[name_member] = _PLACEHOLDER_NAME
        request = self.walk(request, shape, "")
        for path, message in _param_validator_problems(request, shape):
            if not any(path == p or path.startswith((p + ".", p + "[", p + " "))
                       for p in self.container_expressions):
                self.report(path, message)
        return self.problems

    # -- the walk: substitute expressions, check what ParamValidator leaves out ----------

    def walk(self, value: Any, shape: Shape, path: str) -> Any:
        if is_expression(value):
            return self.expression(value, shape, path)
        kind = shape.type_name
        if kind == "structure" and isinstance(value, dict):
            return {key: self.walk(item, shape.members[key], _child(path, key))
                    if key in shape.members else item for key, item in value.items()}
        if kind == "list" and isinstance(value, list):
            self.check_size(len(value), shape, path, "items")
            return [self.walk(item, shape.member, f"{path}[{i}]") for i, item in enumerate(value)]
        if kind == "map" and isinstance(value, dict):
            self.check_size(len(value), shape, path, "entries")
            for key in value:
                for message in scalar_problems(key, shape.key, check_min=False):
                    self.report(f"{path} (key: {key})", message)
            return {key: self.walk(item, shape.value, _child(path, key))
                    for key, item in value.items()}
        for message in scalar_problems(value, shape, check_min=False):
            self.report(path, message)
        return value

    def check_size(self, size: int, shape: Shape, path: str, what: str) -> None:
        limit = shape.metadata.get("max")
        if limit is not None and size > limit:
            self.report(path, f"{size} {what}, more than max {limit}")

    def expression(self, expr: dict, shape: Shape, path: str) -> Any:
        kind = SHAPE_KINDS.get(shape.type_name)
        if kind is None:
            self.report(path, f"expression {_show(expr)} stands for a {shape.type_name} "
                              f"({shape.name}); Pipelines substitutes scalar values only")
            self.container_expressions.append(path)
            return expr
        source, label = self.expression_kind(expr, path)
        if source is not None and not _assignable(source, kind):
            self.report(path, f"{label} yields {source}, the member wants {shape.type_name}")
        default = self.parameter_default(expr)
        if default is not None and (source is None or _assignable(source, kind)):
            name = expr["Get"]
            for message in scalar_problems(default, shape):
                self.report(path, f"default of {name}: {message}")
        return placeholder(shape)

    # -- what an expression yields -------------------------------------------------------

    def expression_kind(self, expr: dict, path: str) -> tuple[str | None, str]:
        """``(kind, description)``: the kind of value ``expr`` yields, None when unknown."""
        (function, argument), = expr.items()
        if function == "Std:Join":
            return "string", "Std:Join"
        if function == "Std:JsonGet":
            return None, "Std:JsonGet"
        reference = str(argument)
        label = f"Get {reference}"
        root, _, rest = reference.partition(".")
        if root == "Parameters":
            if self.parameters is None:
                return None, label
            parameter = self.parameters.get(rest)
            if parameter is None:
                self.report(path, f"{label}: no such pipeline parameter")
                return None, label
            kind = parameter.get("Type")
            return PARAMETER_KINDS.get(kind), f"{label} ({kind} parameter)"
        if root in ("Execution", "PipelineExperimentConfig"):
            return "string", label
        if root == "Steps":
            return self.property_kind(reference, path), label
        self.report(path, f"{label}: unknown reference")
        return None, label

    def property_kind(self, reference: str, path: str) -> str | None:
        """The kind of ``Steps.<name>.<property path>``, from the step's response shapes."""
        _, _, rest = reference.partition(".")
        step_name, _, property_path = rest.partition(".")
        if self.step_types is None:
            return None
        if step_name not in self.step_types:
            self.report(path, f"Get {reference}: no step named {step_name!r}")
            return None
        shape_names = PROPERTY_SHAPES.get(self.step_types[step_name])
        if not shape_names:  # Lambda / Callback outputs and the like: not typed here
            return None
        for shape_name in shape_names:
            shape = _resolve_property(service_model().shape_for(shape_name), property_path)
            if shape is not None:
                return SHAPE_KINDS.get(shape.type_name, shape.type_name)
        self.report(path, f"Get {reference}: no such property of a "
                          f"{self.step_types[step_name]} step")
        return None

    def parameter_default(self, expr: dict) -> Any:
        reference = expr.get("Get")
        if isinstance(reference, str) and reference.startswith("Parameters."):
            parameter = (self.parameters or {}).get(reference[len("Parameters."):], {})
            return parameter.get("DefaultValue")
        return None


def _assignable(source: str, target: str) -> bool:
    return source == target or (source, target) == ("integer", "float")


def _resolve_property(shape: Shape, path: str) -> Shape | None:
    """The member shape at ``path`` (``A.B['key'].C``, ``A[0]``) under ``shape``, or None."""
    position = 0
    while position < len(path):
        match = _PROPERTY_TOKEN.match(path, position)
        if not match:
            return None
        position = match.end()
        member, *keys = match.groups()
        if member is not None:
            if shape.type_name != "structure" or member not in shape.members:
                return None
            shape = shape.members[member]
        elif shape.type_name == "list":
            shape = shape.member
        elif shape.type_name == "map" and keys[2] is None:
            shape = shape.value
        else:
            return None
    return shape


# ----------------------------------------------------------------------------------------
# Scalars: constraints and placeholders
# ----------------------------------------------------------------------------------------

def scalar_problems(value: Any, shape: Shape, *, check_min: bool = True) -> list[str]:
    """What a concrete scalar breaks of ``shape``'s constraints.

    With ``check_min=False`` only what ParamValidator does not check (maximums, pattern,
    enum, booleans as numbers); type mismatches are left to ParamValidator then.
    """
    meta = shape.metadata
    kind = shape.type_name
    problems = []
    if kind == "string":
        if not isinstance(value, str):
            return [] if not check_min else [f"expected string, got {_type_name(value)}"]
        if check_min and "min" in meta and len(value) < meta["min"]:
            problems.append(f"{_show(value)} shorter than {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            shown = _show(value)
            if shown.endswith("..."):
                shown += f" ({len(value)} chars)"
            problems.append(f"{shown} longer than {meta['max']}")
        if shape.enum and value not in shape.enum:
            problems.append(f"{_show(value)} not one of {_show(shape.enum, 120)}")
        pattern = meta.get("pattern")
        if pattern is not None:
            compiled = _compiled(pattern)
            if compiled is None:
                SKIPPED_PATTERNS[shape.name] = pattern
            elif not compiled.fullmatch(value):
                problems.append(f"{_show(value)} does not match pattern {pattern}")
    elif kind in ("integer", "long", "float", "double"):
        wanted = "integer" if kind in ("integer", "long") else "number"
        numeric = (int,) if wanted == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            if isinstance(value, bool) or check_min:
                problems.append(f"expected {wanted}, got {_type_name(value)}")
            return problems
        if check_min and "min" in meta and value < meta["min"]:
            problems.append(f"{value} less than min {meta['min']}")
        if "max" in meta and value > meta["max"]:
            problems.append(f"{value} greater than max {meta['max']}")
    elif kind == "boolean" and check_min and not isinstance(value, bool):
        problems.append(f"expected boolean, got {_type_name(value)}")
    return problems


def placeholder(shape: Shape) -> Any:
    """A value of ``shape``'s scalar type that meets its length, range and enum."""
    meta = shape.metadata
    kind = shape.type_name
    if kind == "string":
        if shape.enum:
            return shape.enum[0]
        return "x" * max(1, meta.get("min", 1))
    if kind in ("integer", "long", "float", "double"):
        number = max(1, meta.get("min", 1))
        number = min(number, meta.get("max", number))
        return int(number) if kind in ("integer", "long") else float(number)
    if kind == "boolean":
        return True
    if kind == "timestamp":
        return datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    if kind == "blob":
        return b"x"
    raise ValueError(f"no placeholder for a {kind}")


def _type_name(value: Any) -> str:
    return type(value).__name__


# ----------------------------------------------------------------------------------------
# ParamValidator's findings, made readable
# ----------------------------------------------------------------------------------------

def _param_validator_problems(request: dict, shape: Shape) -> list[tuple[str, str]]:
    """``(path, message)`` for each error botocore's ParamValidator finds."""
    report = ParamValidator().validate(request, shape)
    if not report.has_errors():
        return []
    errors = getattr(report, "_errors", None)
    if errors is None:  # botocore changed its internals: fall back on its own wording
        return [("", line) for line in report.generate_report().splitlines()]
    return [_describe(*error) for error in errors]


def _describe(error_type: str, name: str, details: dict) -> tuple[str, str]:
    path = name.lstrip(".")
    if error_type == "missing required field":
        return _child(path, details["required_name"]), "missing required member"
    if error_type == "unknown field":
        return _child(path, details["unknown_param"]), "unknown member"
    if error_type == "invalid type":
        wanted = list(dict.fromkeys(
            _TYPE_NAMES.get(t.split("'")[1].rpartition(".")[2], t) if "'" in t else t
            for t in details["valid_types"] if t != "timestamp-string"))
        if "number" in wanted and "integer" in wanted:  # a double takes ints too
            wanted.remove("integer")
        return path, f"expected {' or '.join(wanted)}, got {_type_name(details['param'])}"
    if error_type == "invalid range":
        return path, f"{details['param']} less than min {details['min_allowed']}"
    if error_type == "invalid length":
        return path, f"length {details['param']} less than min {details['min_allowed']}"
    return path, f"{error_type} {details}"
