"""What every step builder receives: parameters, session, role, S3 locations and options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sagemaker.workflow.parameters import (ParameterBoolean, ParameterFloat, ParameterInteger,
                                           ParameterString)
from sagemaker.workflow.pipeline_context import PipelineSession

from pipelines import spec
from pipelines.spec import SCRIPTS_DIR, BuildOptions  # noqa: F401

from .sources import job_sources

_PARAMETER_TYPES = {"String": ParameterString, "Integer": ParameterInteger,
                    "Float": ParameterFloat, "Boolean": ParameterBoolean}


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
    tags: list = field(default_factory=list)  # [{"Key", "Value"}] on every job and version

    def __post_init__(self):
        if not self.params:
            self.params = make_parameters(self.default_input_url, self.options.tuning_mode,
                                          self.no_approved_version_url)

    @property
    def default_input_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/data/"

    @property
    def no_approved_version_url(self) -> str:
        """ApprovedModelDataUrl's default: a prefix holding only a placeholder (pipelines.run
        writes it), which tells Evaluate no version is approved."""
        return self.s3(spec.NO_APPROVED_VERSION[0]) + "/"

    def s3(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", self.prefix, *parts])

    def source(self, job: str) -> str:
        """The job's source directory: the scripts with only the job's own requirements
        (spec.JOB_REQUIREMENTS), so no job installs what another one needs."""
        return str(job_sources(SCRIPTS_DIR, spec.JOB_REQUIREMENTS[job]))

    def code_location(self, source: str) -> str:
        """Content-addressed: changed scripts or requirements get a new S3 key, so the steps
        that run them miss the cache."""
        return self.s3("code", Path(source).name)

    def p(self, name: str):
        return self.params[name]

    def value(self, item):
        """A spec value: a parameter reference as its pipeline variable, a build option as
        its value, anything else as it is."""
        if isinstance(item, spec.Param):
            return self.p(item)
        if isinstance(item, spec.BuildOption):
            return str(getattr(self.options, item))
        return item

    def arguments(self, template: list) -> list:
        """A spec argument list with parameter references as pipeline variables (strings)."""
        return [self.p(a).to_string() if isinstance(a, spec.Param) else self.value(a)
                for a in template]


def make_parameters(default_input_url: str,
                    tuning_mode: str = spec.DEFAULT_TUNING_MODE,
                    no_approved_url: str = "") -> dict:
    params = {}
    for spec_param in spec.PARAMETERS:
        default = spec.parameter_default(spec_param.name, tuning_mode)
        if spec_param.name == "InputDataUrl" and not default:
            default = default_input_url
        if spec_param.name == "ApprovedModelDataUrl" and not default:
            default = no_approved_url
        params[spec_param.name] = _PARAMETER_TYPES[spec_param.type](name=spec_param.name,
                                                                    default_value=default)
    return params
