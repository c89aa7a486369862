"""Local blue/green deploys onto managed local endpoints (``pipelines.deploy.endpoints``).

A new version starts beside the old one, is smoke-tested, and only then replaces it: a failed
smoke test leaves the previous version serving. Staging gets the newest Approved version (an
older one when the newest was rejected: a rollback); production gets what serves in staging.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pipelines.deploy import smoke
from pipelines.deploy.endpoints import Endpoint, Endpoints, alive, invoke, start_server, stop
from pipelines.monitor import capture_root
from pipelines.registry import LocalRegistry, ModelPackage, home_dir


class DeployError(Exception):
    pass


def smoke_test(url: str) -> str | None:
    """None if the endpoint answers a JPEG with one well-formed prediction, else the problem."""
    try:
        response = invoke(url, smoke.smoke_image(), "image/jpeg")
    except Exception as exc:  # noqa: BLE001 - any failure is a failed smoke test
        return f"request failed: {exc}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    return smoke.problem_with(response.text)


def deploy_local(home, group: str, name: str, version: int, model_data: str, echo=print,
                 artifact_problem=None, still_approved=None, capture_percent: float = 100.0
                 ) -> bool:
    """Blue/green: start the new version, smoke-test it, then switch and stop the old one.
    ``artifact_problem()`` (what is wrong with the model's archive, or None) is asked before
    anything starts, ``still_approved()`` (the version's status now) just before the switch:
    a version rejected while it was being deployed does not go live. Returns True when
    something changed. The caller holds ``Endpoints.deploying()``. ``capture_percent`` of the
    requests are captured under ``<home>/data-capture/<name>/`` (``pipelines.monitor`` reads
    them; 0: none)."""
    endpoints = Endpoints(home)
    current = endpoints.get(name)
    if current and current.version == version and alive(current):
        echo(f"{name} already serves {group} version {version} at {current.url}: nothing to do")
        return False
    problem = artifact_problem() if artifact_problem else None
    if problem:
        raise DeployError(f"{group} version {version} cannot be deployed: {problem}")
    echo(f"{name}: starting {group} version {version}")
    capture = ("--capture-dir", str(capture_root(home_dir(home))), "--endpoint-name", name,
               "--capture-percent", f"{capture_percent:g}") if capture_percent > 0 else ()
    proc, url, log_path, workdir = start_server(home_dir(home), name, model_data, version,
                                                extra_args=capture)
    keeps = lambda: f"; version {current.version} keeps serving" \
        if current and alive(current) else ""  # noqa: E731
    try:
        problem = smoke_test(url)
        if problem:
            raise DeployError(f"smoke test of {name} version {version} failed: {problem}"
                              f"{keeps()}")
        status = still_approved() if still_approved else "Approved"
        if status != "Approved":
            raise DeployError(f"{group} version {version} is {status} now (changed while it "
                              f"was being deployed): it was not put live{keeps()}")
        endpoints.put(Endpoint(name, url, proc.pid, group, version, model_data, str(log_path),
                               datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               str(workdir)))
    except BaseException:  # not put live, whatever stopped it: the new server goes
        stop(proc.pid, workdir)
        raise
    if current:
        stop(current.pid, current.workdir or None)
    echo(f"{name}: {group} version {version} InService at {url} (smoke test passed)")
    return True


def staging_package(registry: LocalRegistry, endpoints: Endpoints, group: str, name: str,
                    echo) -> ModelPackage | None:
    """The newest Approved version; None (after saying so) when there is none and nothing
    serves. A live version no longer approved with nothing approved left is an error."""
    package = registry.latest_approved(group)
    if package is not None:
        return package
    current = endpoints.get(name)
    if current is None or not alive(current):
        echo(f"no Approved version in {group} yet: approve one with "
             f"python -m pipelines.registry approve VERSION")
        return None
    status = registry.describe(group, current.version).approval_status
    raise DeployError(f"{name} serves {group} version {current.version}, which is {status} now, "
                      f"and no Approved version remains: the endpoint is left as it is; approve "
                      f"a version and deploy again")


def prod_package(registry: LocalRegistry, endpoints: Endpoints, group: str,
                 staging: str) -> ModelPackage:
    staged = endpoints.get(staging)
    if staged is None or not alive(staged):
        raise DeployError(f"nothing serving in {staging}: deploy to staging first (prod only "
                          f"gets a version that passed staging)")
    package = registry.describe(group, staged.version)
    if package.approval_status != "Approved":
        raise DeployError(f"{group} version {staged.version} is {package.approval_status} "
                          f"now; it will not go to production")
    return package


def deploy_stage(home, group: str, prefix: str, stage: str, echo=print,
                 capture_percent: float = 100.0) -> ModelPackage | None:
    """Bring ``<prefix>-<stage>`` to the version it should serve; that package, or None when
    there is nothing to deploy. One deploy at a time per home; servers of ours that no record
    names (left by a deploy that died) are stopped first."""
    registry, endpoints = LocalRegistry(home), Endpoints(home)
    name = f"{prefix}-{stage}"
    with endpoints.deploying(echo):
        endpoints.sweep(echo)
        if stage == "staging":
            package = staging_package(registry, endpoints, group, name, echo)
        else:
            package = prod_package(registry, endpoints, group, f"{prefix}-staging")
        if package is None:
            return None
        deploy_local(home_dir(home), group, name, package.version, package.model_data, echo,
                     artifact_problem=lambda: registry.artifact_problem(package),
                     still_approved=lambda: registry.describe(group, package.version
                                                              ).approval_status,
                     capture_percent=capture_percent)
    return package


def outputs(package: ModelPackage, endpoint: str) -> dict:
    """The same keys as a SageMaker deploy writes (no ARN in the local registry)."""
    def shown(value):
        return "unknown" if value is None else str(value)

    return {"MODEL_PACKAGE_GROUP": package.group, "MODEL_PACKAGE_VERSION": str(package.version),
            "MODEL_PACKAGE_ARN": package.arn,
            "VALIDATION_ACCURACY": shown(package.validation_accuracy),
            "TEST_ACCURACY": shown(package.accuracy), "ENDPOINT_NAME": endpoint}
