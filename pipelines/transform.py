"""Batch Transform in SageMaker: which registered version scores, and the requests that score
with it (a Model of the version, a transform job over an S3 prefix).

Used by ``python -m pipelines.batch --sagemaker`` (one job, now) and by
``python -m pipelines.run --upsert/--start --batch`` (the DogBreedBatch pipeline's parameters);
the transform's settings are ``spec.TRANSFORM``, which steps/batch.py builds the pipeline's
TransformStep from, so both send the same request.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pipelines import spec
from pipelines.aws import CliError


def version_parameters(package: dict) -> dict:
    """The batch pipeline's parameters for a described model package."""
    (container, *_) = package["InferenceSpecification"]["Containers"]
    return {"ModelPackageArn": package["ModelPackageArn"], "InferenceImage": container["Image"],
            "ModelDataUrl": container["ModelDataUrl"]}


def sagemaker_package(session, group: str, version: int | None = None) -> dict:
    """DescribeModelPackage of ``version``, or of the group's newest Approved version."""
    from botocore.exceptions import ClientError

    sm = session.client("sagemaker")
    if version is None:
        try:
            found = sm.list_model_packages(ModelPackageGroupName=group,
                                           ModelApprovalStatus="Approved", SortBy="CreationTime",
                                           SortOrder="Descending", MaxResults=1)
        except ClientError as exc:
            if "does not exist" in str(exc) or "ResourceNotFound" in str(exc):
                raise CliError(f"model package group {group} does not exist: run the build "
                               f"pipeline first (python -m pipelines.run --upsert --start)") \
                    from None
            raise
        summaries = found.get("ModelPackageSummaryList", [])
        if not summaries:
            raise CliError(f"no Approved version in {group}: approve one (python -m "
                           f"pipelines.registry --sagemaker approve N) or pass --version N")
        return sm.describe_model_package(ModelPackageName=summaries[0]["ModelPackageArn"])
    from pipelines.registry import RegistryError, SageMakerRegistry

    try:
        arn = SageMakerRegistry(session).describe(group, version).arn
    except RegistryError as exc:
        raise CliError(str(exc)) from None
    return sm.describe_model_package(ModelPackageName=arn)


def local_version(home: Path, group: str, bucket: str, prefix: str, image: str,
                  version: int | None = None) -> dict:
    """The local registry's version (default the newest Approved) as the batch pipeline's
    parameters (and its ModelPackageVersion). Its archive is put into the local object store,
    where a version's ModelDataUrl is in SageMaker: ``s3://<bucket>/<prefix>/registry/<group>/<version>/``."""
    from pipelines.local.objectstore import ObjectStore
    from pipelines.registry import LocalRegistry, RegistryError, usable_version

    try:
        package = usable_version(LocalRegistry(home), group, version)
    except RegistryError as exc:
        raise CliError(str(exc)) from None
    uri = f"s3://{bucket}/{prefix}/registry/{group}/{package.version}/model.tar.gz"
    store = ObjectStore(home / "s3")
    target = store.path(uri)
    if not target.is_file() or target.stat().st_size != Path(package.model_data).stat().st_size:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package.model_data, target)
    from pipelines.local.objectstore import LOCAL_ACCOUNT, LOCAL_REGION

    arn = (f"arn:aws:sagemaker:{LOCAL_REGION}:{LOCAL_ACCOUNT}:model-package/"
           f"{group.lower()}/{package.version}")
    return {"ModelPackageArn": arn, "InferenceImage": image, "ModelDataUrl": uri,
            "ModelPackageVersion": package.version}


def model_name(package: dict, instance_type: str) -> str:
    """``dogbreed-batch-<group>-v<N>`` (63 characters at most), the same for every job of a
    version on CPU (``-gpu`` for a GPU image)."""
    group = package["ModelPackageGroupName"].lower()
    version = package["ModelPackageVersion"]
    suffix = f"-v{version}" + ("-gpu" if instance_type.startswith(("ml.g", "ml.p")) else "")
    head = f"{spec.BATCH_JOB_PREFIX}-{group}"
    if len(head) + len(suffix) > 63:
        head = head[:63 - len(suffix) - 9] + "-" + hashlib.sha256(group.encode()).hexdigest()[:8]
    return head + suffix


def model_request(name: str, role_arn: str, container: dict, tags: list) -> dict:
    """CreateModel: the version's container (ModelPackageName, as the deploy's models)."""
    request = {"ModelName": name, "ExecutionRoleArn": role_arn, "PrimaryContainer": container}
    if tags:
        request["Tags"] = tags
    return request


def transform_request(job_name: str, model: str, input_url: str, output_url: str,
                      instance_type: str, instance_count: int, package_arn: str,
                      tags: list) -> dict:
    """CreateTransformJob with spec.TRANSFORM's settings: what steps/batch.py's
    TransformStep sends."""
    t = spec.TRANSFORM
    request = {
        "TransformJobName": job_name,
        "ModelName": model,
        "MaxConcurrentTransforms": t["max_concurrent"],
        "MaxPayloadInMB": t["max_payload_mb"],
        "BatchStrategy": t["strategy"],
        "Environment": {**t["environment"], "MODEL_PACKAGE_ARN": package_arn},
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                           "S3Uri": input_url}},
                           "ContentType": t["content_type"], "SplitType": t["split_type"]},
        "TransformOutput": {"S3OutputPath": output_url, "Accept": t["accept"],
                            "AssembleWith": t["assemble_with"]},
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
    }
    if tags:
        request["Tags"] = tags
    return request


def approved_for_comparison(find) -> dict:
    """The build pipeline's ApprovedModelDataUrl and ApprovedModelVersion: ``find()`` (the
    newest Approved version, as version_parameters gives it, plus ModelPackageVersion), or {}
    when there is none (CliError): Evaluate then has nothing to compare with."""
    try:
        found = find()
    except CliError:
        return {}
    return {"ApprovedModelDataUrl": found["ModelDataUrl"],
            "ApprovedModelVersion": str(found["ModelPackageVersion"])}
