"""What every step builder receives: parameters, session, role, S3 locations and options."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from sagemaker.workflow.parameters import (ParameterBoolean, ParameterFloat, ParameterInteger,
                                           ParameterString)
from sagemaker.workflow.pipeline_context import PipelineSession

from pipelines import spec

SCRIPTS_DIR = str(Path(__file__).resolve().parent.parent / "scripts")

_PARAMETER_TYPES = {"String": ParameterString, "Integer": ParameterInteger,
                    "Float": ParameterFloat, "Boolean": ParameterBoolean}


@dataclass(frozen=True)
class BuildOptions:
    """Structural choices, fixed when the pipeline is built (not per execution).

    Spot training is one: SageMaker rejects MaxWaitTimeInSeconds unless spot is on, so it
    cannot be switched by a pipeline parameter. Instance counts change the distribution set-up.
    """

    debugger_rules: bool = True
    profiler: bool = True
    spot: bool = False
    training_instance_count: int = 1
    cache_expire: str = "P30D"


@dataclass
class BuildContext:
    session: PipelineSession
    role_arn: str
    bucket: str
    prefix: str
    pipeline_name: str
    model_package_group: str
    options: BuildOptions = field(default_factory=BuildOptions)
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.params:
            self.params = make_parameters(self.default_input_url)

    @property
    def default_input_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/data/"

    def s3(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", self.prefix, *parts])

    @property
    def code_location(self) -> str:
        """Content-addressed: new scripts get a new S3 key, so cached steps re-run."""
        return self.s3("code", scripts_digest(SCRIPTS_DIR)[:16])

    def p(self, name: str):
        return self.params[name]

    def arguments(self, template: list) -> list:
        """A spec argument list with parameter references as pipeline variables."""
        return [self.p(a).to_string() if isinstance(a, spec.Param) else a for a in template]


def make_parameters(default_input_url: str) -> dict:
    params = {}
    for spec_param in spec.PARAMETERS:
        default = spec_param.default
        if spec_param.name == "InputDataUrl" and not default:
            default = default_input_url
        params[spec_param.name] = _PARAMETER_TYPES[spec_param.type](name=spec_param.name,
                                                                    default_value=default)
    return params


@lru_cache(maxsize=None)
def scripts_digest(scripts_dir: str) -> str:
    """sha256 over the container scripts' paths and bytes (caches ignored)."""
    digest = hashlib.sha256()
    root = Path(scripts_dir)
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()
