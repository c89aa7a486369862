"""Pipeline expressions, resolved as SageMaker Pipelines resolves them at run time.

``Get`` of ``Parameters.X``, ``Execution.X`` and ``Steps.<name>.<property path>`` (the path
into the step's Describe* response, lists keyed by name as the SDK writes them:
``ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri``,
``BestTrainingJob.TunedHyperParameters['lr']``) and ``Steps.<name>.PropertyFiles.<file>``;
``Std:Join``; ``Std:JsonGet`` on a property file; and the condition types the SDK emits.
Anything else is an :class:`Unsupported` naming it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

EXPRESSIONS = ("Get", "Std:Join", "Std:JsonGet")
CONDITIONS = ("Equals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo",
              "In", "Not", "Or")

# which member names a list of a Describe* response by, in ``Outputs['name']``
LIST_KEYS = ("OutputName", "InputName", "ChannelName", "Name", "MetricName",
             "RuleConfigurationName", "TrainingJobName")
_TOKEN = re.compile(r"\.?([A-Za-z0-9_]+)|\[(?:'([^']*)'|\"([^\"]*)\"|(\d+))\]")
_JSON_PATH = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


class Unsupported(Exception):
    """An expression, condition or step the engine does not run."""


class ResolveError(Exception):
    """A reference that names nothing (an unknown parameter, step, property or file)."""


def is_expression(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in EXPRESSIONS


class Resolver:
    """Resolves expressions against the execution: ``parameters`` (name -> value),
    ``execution`` (``PipelineExecutionId``, ...), ``properties(step)`` (the step's Describe*
    response) and ``property_file(step, name)`` (the parsed JSON of one of its files)."""

    def __init__(self, parameters: dict, execution: dict,
                 properties: Callable[[str], dict], property_file: Callable[[str, str], Any]):
        self.parameters = parameters
        self.execution = execution
        self.properties = properties
        self.property_file = property_file

    def resolve(self, value: Any) -> Any:
        """``value`` with every expression in it replaced by its value."""
        if is_expression(value):
            return self.expression(value)
        if isinstance(value, dict):
            if any(str(k).startswith("Std:") for k in value) and len(value) == 1:
                raise Unsupported(f"pipeline function {next(iter(value))} is not supported "
                                  f"(supported: {', '.join(EXPRESSIONS)})")
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value

    def expression(self, expr: dict) -> Any:
        (function, argument), = expr.items()
        if function == "Get":
            return self.get(argument)
        if function == "Std:Join":
            return str(argument.get("On", "")).join(_text(self.resolve(v))
                                                    for v in argument.get("Values", []))
        if function == "Std:JsonGet":
            return self.json_get(argument)
        raise Unsupported(f"pipeline function {function}")

    def get(self, reference: str) -> Any:
        root, _, rest = str(reference).partition(".")
        if root == "Parameters":
            if rest not in self.parameters:
                raise ResolveError(f"Get {reference}: no pipeline parameter {rest}")
            return self.parameters[rest]
        if root == "Execution":
            if rest == "CurrentDateTime":  # when the step resolves it, as in SageMaker
                from datetime import datetime, timezone

                return datetime.now(timezone.utc).isoformat(timespec="seconds")
            if rest not in self.execution:
                raise Unsupported(f"Get {reference}: execution variable {rest} (supported: "
                                  f"{', '.join(sorted(self.execution))})")
            return self.execution[rest]
        if root == "Steps":
            step, _, path = rest.partition(".")
            if path.startswith("PropertyFiles."):
                raise Unsupported(f"Get {reference} outside Std:JsonGet")
            return property_at(self.properties(step), path, f"Steps.{step}")
        raise Unsupported(f"Get {reference}: references of kind {root!r}")

    def json_get(self, argument: dict) -> Any:
        source = argument.get("PropertyFile")
        reference = source.get("Get", "") if isinstance(source, dict) else ""
        match = re.fullmatch(r"Steps\.([^.]+)\.PropertyFiles\.(.+)", str(reference))
        if not match:
            raise Unsupported(f"Std:JsonGet of {source!r} (supported: a step's PropertyFile)")
        document = self.property_file(match.group(1), match.group(2))
        return json_path(document, argument.get("Path", ""), reference)

    # -- conditions -------------------------------------------------------------------------

    def condition(self, condition: dict) -> tuple[bool, str]:
        """Whether the condition holds, and how it read (for the log)."""
        kind = condition.get("Type")
        if kind == "Not":
            held, text = self.condition(condition["Condition"])
            return not held, f"not ({text})"
        if kind == "Or":
            results = [self.condition(c) for c in condition["Conditions"]]
            return any(r[0] for r in results), " or ".join(f"({r[1]})" for r in results)
        if kind == "In":
            value = self.resolve(condition["QueryValue"])
            values = [self.resolve(v) for v in condition["Values"]]
            return value in values, f"{value!r} in {values!r}"
        operators = {"Equals": ("==", lambda a, b: a == b),
                     "GreaterThan": (">", lambda a, b: a > b),
                     "GreaterThanOrEqualTo": (">=", lambda a, b: a >= b),
                     "LessThan": ("<", lambda a, b: a < b),
                     "LessThanOrEqualTo": ("<=", lambda a, b: a <= b)}
        if kind not in operators:
            raise Unsupported(f"condition type {kind} (supported: {', '.join(CONDITIONS)})")
        left, right = self.resolve(condition["LeftValue"]), self.resolve(condition["RightValue"])
        symbol, test = operators[kind]
        a, b = _comparable(left, right)
        try:
            held = bool(test(a, b))
        except TypeError:
            raise ResolveError(f"condition {kind} cannot compare {left!r} with {right!r}") \
                from None
        return held, f"{left} {symbol} {right}"


def property_at(document: Any, path: str, where: str) -> Any:
    """The value at ``path`` (``A.B['key'].C``, ``A[0]``) of a Describe* response."""
    value, position, seen = document, 0, where
    while position < len(path):
        match = _TOKEN.match(path, position)
        if not match:
            raise ResolveError(f"Get {where}.{path}: cannot read the path at {path[position:]!r}")
        position = match.end()
        member, single, double, index = match.groups()
        if member is not None:
            seen += f".{member}"
            if not isinstance(value, dict) or member not in value:
                raise ResolveError(f"Get {where}.{path}: {seen} is not in the step's properties")
            value = value[member]
            continue
        key = single if single is not None else double
        seen += f"[{index}]" if key is None else f"['{key}']"
        if key is None:
            if not isinstance(value, list) or int(index) >= len(value):
                raise ResolveError(f"Get {where}.{path}: {seen} is out of range")
            value = value[int(index)]
        elif isinstance(value, dict):  # a map (TunedHyperParameters, Environment)
            if key not in value:
                raise ResolveError(f"Get {where}.{path}: {seen} is not in the step's properties")
            value = value[key]
        elif isinstance(value, list):
            matches = [item for item in value if isinstance(item, dict) and
                       any(item.get(k) == key for k in LIST_KEYS)]
            if not matches:
                raise ResolveError(f"Get {where}.{path}: no item named {key!r} at {seen}")
            value = matches[0]
        else:
            raise ResolveError(f"Get {where}.{path}: {seen} is not a list or map")
    return value


def json_path(document: Any, path: str, where: str) -> Any:
    """JsonGet's path (``a.b[0].c``) into a property file; a missing member is an error, as
    in SageMaker ("invalid JsonPath")."""
    value, position = document, 0
    while position < len(path):
        match = _JSON_PATH.match(path, position)
        if not match:
            raise ResolveError(f"JsonGet {path!r} of {where}: cannot read it at "
                               f"{path[position:]!r}")
        position = match.end()
        member, index = match.groups()
        if member is not None and isinstance(value, dict) and member in value:
            value = value[member]
        elif index is not None and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            raise ResolveError(f"JsonGet {path!r} of {where}: the file has no "
                               f"{path[:position]!r}")
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _comparable(left: Any, right: Any) -> tuple[Any, Any]:
    """Numbers compare as numbers (a JsonGet of "0.9" with a Float parameter 0.7)."""
    def number(v):
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, float)):
            return v
        try:
            return float(v)
        except (TypeError, ValueError):
            return None
    a, b = number(left), number(right)
    if a is not None and b is not None and (not isinstance(left, str) or
                                            not isinstance(right, str)):
        return a, b
    return left, right
