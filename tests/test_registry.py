"""The model registry: local SQLite (with parallel registrations) and SageMaker's, via moto."""

from __future__ import annotations

import multiprocessing

import boto3
import pytest

from pipelines import registry
from pipelines.registry import LocalRegistry, RegistryError, SageMakerRegistry

GROUP = "DogBreedModels"
METRICS = {"multiclass_classification_metrics": {"accuracy": {"value": 0.83,
                                                              "standard_deviation": 0.01}}}


def test_local_register_list_describe_approve_reject(tmp_path):
    reg = LocalRegistry(tmp_path)
    first = reg.register(GROUP, "/models/1/model.tar.gz", metrics=METRICS,
                         hyperparameters={"lr": "0.001"},
                         lineage={"execution": "exec-1", "data_fingerprint": "sha256:ab"})
    second = reg.register(GROUP, "/models/2/model.tar.gz")
    other = reg.register("OtherGroup", "/models/x")
    assert (first.version, second.version, other.version) == (1, 2, 1)  # numbered per group
    assert first.approval_status == "PendingManualApproval" and first.accuracy == 0.83
    assert [p.version for p in reg.list(GROUP)] == [2, 1]  # newest first
    assert reg.latest_approved(GROUP) is None
    approved = reg.set_status(GROUP, 1, "Approved", "looks good")
    assert approved.approval_status == "Approved" and approved.approval_description == "looks good"
    assert approved.updated_at >= approved.created_at
    assert reg.latest_approved(GROUP).version == 1
    reg.set_status(GROUP, 2, "Approved")
    assert reg.latest_approved(GROUP).version == 2
    reg.set_status(GROUP, 2, "Rejected")
    assert reg.latest_approved(GROUP).version == 1
    assert [p.version for p in reg.list(GROUP, "Rejected")] == [2]
    described = LocalRegistry(tmp_path).describe(GROUP, 1)  # persisted
    assert described.lineage["execution"] == "exec-1"
    assert described.hyperparameters == {"lr": "0.001"}
    with pytest.raises(RegistryError, match="version 7 does not exist .* versions: 1, 2"):
        reg.set_status(GROUP, 7, "Approved")
    with pytest.raises(RegistryError, match="no versions"):
        reg.describe("Empty", 1)
    with pytest.raises(RegistryError, match="unknown approval status"):
        reg.set_status(GROUP, 1, "Maybe")


def _register_many(args):
    home, worker, count = args
    reg = LocalRegistry(home)
    return [reg.register(GROUP, f"/models/{worker}-{i}").version for i in range(count)]


def test_parallel_registrations_get_distinct_versions(tmp_path):
    with multiprocessing.get_context("fork").Pool(6) as pool:
        results = pool.map(_register_many, [(str(tmp_path), w, 8) for w in range(6)])
    versions = sorted(v for chunk in results for v in chunk)
    assert versions == list(range(1, 49))  # none lost, none repeated
    models = {p.model_data for p in LocalRegistry(tmp_path).list(GROUP)}
    assert len(models) == 48


def test_local_cli(tmp_path, capsys):
    reg = LocalRegistry(tmp_path)
    reg.register(GROUP, "/m/1", metrics=METRICS)
    reg.register(GROUP, "/m/2")
    home = ["--home", str(tmp_path)]
    assert registry.main([*home, "list"]) == 0
    out = capsys.readouterr().out
    assert out.index("      2") < out.index("      1") and "0.8300" in out
    assert registry.main([*home, "approve", "1", "--note", "ok"]) == 0
    assert "version 1: Approved" in capsys.readouterr().out
    assert registry.main([*home, "reject", "9"]) == 2
    err = capsys.readouterr().err
    assert "version 9 does not exist" in err and "Traceback" not in err
    assert registry.main([*home, "describe", "1"]) == 0
    assert '"approval_status": "Approved"' in capsys.readouterr().out
    assert registry.main([*home, "list", "--status", "Approved"]) == 0
    assert "PendingManualApproval" not in capsys.readouterr().out


@pytest.fixture
def sagemaker(fake_aws):
    sm = boto3.client("sagemaker", region_name="us-east-1")
    sm.create_model_package_group(ModelPackageGroupName=GROUP)
    for i in range(3):
        sm.create_model_package(
            ModelPackageGroupName=GROUP, ModelApprovalStatus="PendingManualApproval",
            InferenceSpecification={
                "Containers": [{"Image": "123.dkr.ecr.us-east-1.amazonaws.com/x:1",
                                "ModelDataUrl": f"s3://b/model-{i + 1}.tar.gz"}],
                "SupportedContentTypes": ["image/jpeg"],
                "SupportedResponseMIMETypes": ["application/json"]})
    yield sm


def test_sagemaker_registry(sagemaker, capsys):
    reg = SageMakerRegistry(boto3.Session())
    assert [p.version for p in reg.list(GROUP)] == [3, 2, 1]  # newest first
    assert reg.latest_approved(GROUP) is None
    pkg = reg.set_status(GROUP, 2, "Approved", "approved from the CLI")
    assert pkg.approval_status == "Approved" and pkg.model_data == "s3://b/model-2.tar.gz"
    assert reg.latest_approved(GROUP).version == 2
    with pytest.raises(RegistryError, match="version 5 does not exist"):
        reg.set_status(GROUP, 5, "Approved")
    assert registry.main(["--sagemaker", "approve", "3"]) == 0
    assert "version 3: Approved" in capsys.readouterr().out
    assert reg.latest_approved(GROUP).version == 3
    assert registry.main(["--sagemaker", "reject", "4"]) == 2
    assert "version 4 does not exist" in capsys.readouterr().err


def _open_and_register(home, barrier, results):
    barrier.wait()  # every process creates the new database at the same moment
    try:
        LocalRegistry(home).register(GROUP, "/m")
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(repr(exc))


def test_processes_creating_a_new_registry_at_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        home = tmp_path / f"home-{round_}"
        barrier, results = ctx.Barrier(10), ctx.Queue()
        procs = [ctx.Process(target=_open_and_register, args=(str(home), barrier, results))
                 for _ in range(10)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
        assert outcomes == ["ok"] * 10
        assert [p.version for p in LocalRegistry(home).list(GROUP)] == list(range(10, 0, -1))
