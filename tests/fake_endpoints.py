"""SageMaker's endpoint states on top of moto, which has no UpdateEndpoint and makes every
endpoint InService at once.

``FakeEndpoints.install(monkeypatch)`` patches moto's SageMaker classes, so it works under
``mock_aws()`` and through a ``ThreadedMotoServer`` of the same process alike:

- ``UpdateEndpoint`` exists (moto's backend and response handler); like SageMaker it refuses an
  endpoint that is not InService and records each request in ``updates``.
- ``CreateEndpoint`` starts in Creating.
- ``DescribeEndpoint`` moves the state one step on, then answers it, so a deploy's waiting is
  deterministic and needs no sleeping (poll with a zero interval). Steps, from the call:

      create ok        Creating -> InService
      create fail      Creating -> Failed (FailureReason)
      update ok        Updating -> Updating -> InService on the new EndpointConfigName
      update rollback  Updating -> RollingBack -> InService on the OLD EndpointConfigName
                       (an alarm-triggered blue/green rollback; FailureReason set)
      update fail      Updating -> Failed

  Scenario controls: ``next_create("fail")``, ``next_update("rollback" | "fail" | "ok")``,
  ``set_status(name, "Updating", polls=2)`` (InService after that many describes).
- ``InvokeEndpoint`` records (endpoint, status) in ``invocations``; ``serve(config, body)`` makes
  an endpoint answer ``body`` while its traffic goes to ``config`` (during an update: the new
  one), otherwise moto's queued results answer.
"""

from __future__ import annotations

import urllib.parse
from collections import deque

from moto.core.responses import ActionResult
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.models import FakeEndpoint, SageMakerModelBackend, sagemaker_backends
from moto.sagemaker.responses import SageMakerResponse
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

CREATE_PLANS = {"ok": ["Creating", "InService"], "fail": ["Creating", "Failed"]}
UPDATE_PLANS = {"ok": ["Updating", "Updating", "InService:new"],
                "rollback": ["Updating", "RollingBack", "InService:old"],
                "fail": ["Updating", "Failed"]}
ROLLBACK_REASON = ("Endpoint update rolled back: CloudWatch alarm triggered during the "
                   "blue/green deployment")


class FakeEndpoints:
    def __init__(self):
        self.creates: deque[str] = deque()
        self.update_outcomes: deque[str] = deque()
        self.updates: list[dict] = []
        self.invocations: list[tuple[str, str]] = []
        self.answers: dict[str, str] = {}
        self.default_answer: str | None = None
        self._plans: dict[str, list[str]] = {}
        self._targets: dict[str, tuple[str, str]] = {}  # name -> (old config, new config)

    # scenario controls ---------------------------------------------------------------------

    def next_create(self, outcome: str) -> None:
        assert outcome in CREATE_PLANS, outcome
        self.creates.append(outcome)

    def next_update(self, outcome: str) -> None:
        assert outcome in UPDATE_PLANS, outcome
        self.update_outcomes.append(outcome)

    def set_status(self, name: str, status: str, polls: int = 1, region: str = "us-east-1",
                   account: str = "123456789012") -> None:
        """Put an endpoint in ``status``; a busy one is InService (same config) after ``polls``
        more describes."""
        endpoint = sagemaker_backends[account][region].endpoints[name]
        endpoint.endpoint_status = status
        config = endpoint.endpoint_config_name
        self._targets[name] = (config, config)
        busy = status not in ("Failed", "InService", "OutOfService")
        self._plans[name] = [status] * polls + ["InService:new"] if busy else []

    def serve(self, config: str, body: str) -> None:
        self.answers[config] = body

    def serve_all(self, body: str) -> None:
        """The answer of every config not given one with ``serve``."""
        self.default_answer = body

    # the patched behaviour -----------------------------------------------------------------

    def _create(self, original):
        fake = self

        def create_endpoint(backend, endpoint_name, endpoint_config_name, tags):
            endpoint = original(backend, endpoint_name, endpoint_config_name, tags)
            endpoint.endpoint_status = "Creating"
            outcome = fake.creates.popleft() if fake.creates else "ok"
            fake._plans[endpoint_name] = list(CREATE_PLANS[outcome])
            fake._targets[endpoint_name] = (endpoint_config_name, endpoint_config_name)
            return endpoint
        return create_endpoint

    def _update(self):
        fake = self

        def update_endpoint(backend, endpoint_name, endpoint_config_name, request):
            endpoint = backend.endpoints.get(endpoint_name)
            if endpoint is None:
                arn = FakeEndpoint.arn_formatter(endpoint_name, backend.account_id,
                                                 backend.region_name)
                raise ValidationError(message=f"Could not find endpoint '{arn}'.")
            backend.describe_endpoint_config(endpoint_config_name)  # must exist
            if endpoint.endpoint_status != "InService":
                raise ValidationError(message=f"Cannot update in-progress endpoint "
                                              f"'{endpoint.arn}'.")
            if fake._instance_type_changes(backend, endpoint, endpoint_config_name) and \
                    fake._autoscaled(backend, endpoint_name):
                # AWS: an autoscaled variant's instance type cannot change until its scalable
                # target is deregistered ("Update endpoints that use auto scaling")
                raise ValidationError(message="The variant(s) [AllTraffic] are configured with "
                                              "autoscaling; deregister the scalable target "
                                              "before changing the instance type.")
            fake.updates.append(request)
            outcome = fake.update_outcomes.popleft() if fake.update_outcomes else "ok"
            endpoint.endpoint_status = "Updating"
            endpoint.failure_reason = None
            fake._plans[endpoint_name] = list(UPDATE_PLANS[outcome])
            fake._targets[endpoint_name] = (endpoint.endpoint_config_name, endpoint_config_name)
            return endpoint
        return update_endpoint

    @staticmethod
    def _instance_type_changes(backend, endpoint, new_config: str) -> bool:
        def instance_type(config):
            return backend.describe_endpoint_config(config)["ProductionVariants"][0][
                "InstanceType"]
        return instance_type(endpoint.endpoint_config_name) != instance_type(new_config)

    @staticmethod
    def _autoscaled(backend, endpoint_name: str) -> bool:
        from moto.applicationautoscaling.models import applicationautoscaling_backends

        targets = applicationautoscaling_backends[backend.account_id][backend.region_name]
        return any(f"endpoint/{endpoint_name}/" in str(key)
                   for key in getattr(targets, "targets", {}).get(
                       "sagemaker:variant:DesiredInstanceCount", {}))

    def _describe(self, original):
        fake = self

        def describe_endpoint(backend, endpoint_name):
            if endpoint_name in backend.endpoints:
                fake._advance(backend, endpoint_name)
            return original(backend, endpoint_name)
        return describe_endpoint

    def _advance(self, backend, name: str) -> None:
        plan = self._plans.get(name)
        if not plan:
            return
        endpoint = backend.endpoints[name]
        step = plan.pop(0)
        status, _, which = step.partition(":")
        old, new = self._targets[name]
        endpoint.endpoint_status = status
        if status == "Failed":
            endpoint.failure_reason = "the fake failed this endpoint"
        if which == "new" and new != endpoint.endpoint_config_name:
            config = backend.describe_endpoint_config(new)
            endpoint.endpoint_config_name = new
            endpoint.production_variants = endpoint._process_production_variants(
                config["ProductionVariants"])
        if which == "old" and old != new:
            endpoint.failure_reason = ROLLBACK_REASON

    def _invoke(self, original):
        """Wraps moto's response handler: its backend gets no endpoint name (moto 5.2.5)."""
        fake = self

        def invoke_endpoint(response):
            name = urllib.parse.unquote(response.path.split("/")[2])
            backend = sagemaker_backends[response.current_account][response.region]
            endpoint = backend.endpoints.get(name)
            status = endpoint.endpoint_status if endpoint else "missing"
            fake.invocations.append((name, status))
            if endpoint is not None:
                old, new = fake._targets.get(name, (None, None))
                serving = new if status == "Updating" and new else endpoint.endpoint_config_name
                answer = fake.answers.get(serving, fake.default_answer)
                if answer is not None:
                    return 200, {"Content-Type": "application/json"}, answer
            return original(response)
        return invoke_endpoint

    def install(self, monkeypatch) -> "FakeEndpoints":
        def handler(response):
            endpoint = response.sagemaker_backend.update_endpoint(
                response._get_param("EndpointName"), response._get_param("EndpointConfigName"),
                dict(response._get_params()))
            return ActionResult({"EndpointArn": endpoint.arn})

        monkeypatch.setattr(SageMakerModelBackend, "create_endpoint",
                            self._create(SageMakerModelBackend.create_endpoint))
        monkeypatch.setattr(SageMakerModelBackend, "describe_endpoint",
                            self._describe(SageMakerModelBackend.describe_endpoint))
        monkeypatch.setattr(SageMakerModelBackend, "update_endpoint", self._update(),
                            raising=False)
        monkeypatch.setattr(SageMakerResponse, "update_endpoint", handler, raising=False)
        monkeypatch.setattr(SageMakerRuntimeResponse, "invoke_endpoint",
                            self._invoke(SageMakerRuntimeResponse.invoke_endpoint))
        monkeypatch.setattr(SageMakerModelBackend, "update_model_package",
                            _update_model_package(SageMakerModelBackend.update_model_package))
        return self


def _update_model_package(original):
    """UpdateModelPackage as SageMaker does it: what the request leaves out stays as it was
    (moto sets the approval status and the metadata to None)."""
    def update(backend, model_package_arn, model_approval_status, approval_description,
               customer_metadata_properties, customer_metadata_properties_to_remove,
               additional_inference_specifications_to_add):
        package = backend.model_packages.get(
            backend.model_package_name_mapping.get(model_package_arn, model_package_arn))
        if package is not None:
            model_approval_status = model_approval_status or package.model_approval_status
            approval_description = approval_description or package.approval_description
            customer_metadata_properties = {**(package.customer_metadata_properties or {}),
                                            **(customer_metadata_properties or {})}
            if package.additional_inference_specifications is None and \
                    additional_inference_specifications_to_add:
                package.additional_inference_specifications = []
        return original(backend, model_package_arn, model_approval_status,
                        approval_description, customer_metadata_properties,
                        customer_metadata_properties_to_remove,
                        additional_inference_specifications_to_add)
    return update
