"""``python -m pipelines.run --local``: build the definition ``--upsert`` would send, then run it
with the local engine.

The definition is built by the same code and options as ``--upsert`` (pipelines.build), with
the SageMaker SDK's session pointed at the local object store (``<home>/s3``: the code the SDK
uploads lands there; see pipelines.local.objectstore) instead of S3. Only the bucket, the role
and the account differ. Local inputs (a folder, a zip, ``sklearn-digits``, an http(s) URL, an
``s3://`` URI read with your AWS credentials) are staged into the store first, with the same
code as ``pipelines.data.stage`` stages them into S3, and the run gets their ``s3://`` URI.
``--definition FILE`` runs a definition JSON as given instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipelines import spec
from pipelines.aws import CliError
from pipelines.local.objectstore import LOCAL_ROLE, ObjectStore, local_boto_session

LOCAL_BUCKET = "dogbreed-local"
SCHEMES = "a folder of images, a .zip, an http(s) URL, an s3:// URI, or sklearn-digits"


def store_of(home: Path) -> ObjectStore:
    return ObjectStore(Path(home) / "s3")


def build_definition(args, home: Path) -> dict:
    """The definition of ``args``' build options, as ``--upsert`` builds it, with the code the
    SDK uploads in the local store. With --batch, the batch pipeline's, its version parameters
    those of the local registry's version (see pipelines.transform.local_version)."""
    from pipelines.build import build_batch_pipeline, build_pipeline
    from pipelines.run import make_context

    bucket = args.bucket or LOCAL_BUCKET
    session = local_boto_session(store_of(home), args.region or "us-east-1")
    ctx = make_context(args, session, LOCAL_ROLE, bucket, _tags(args))
    if not args.batch:
        return json.loads(build_pipeline(ctx).definition())
    from pipelines import transform
    from steps import batch, register

    image = register.inference_image(ctx, spec.BATCH_INSTANCE_TYPE)
    version = transform.local_version(home, args.model_package_group, bucket,
                                      args.prefix.strip("/"), image, args.version)
    ctx.params = batch.make_parameters(batch.default_input_url(ctx), version)
    return json.loads(build_batch_pipeline(ctx).definition())


def stage_batch_input(url: str, home: Path, bucket: str, prefix: str) -> str:
    """BatchInputUrl: an s3:// prefix of the local store as it is, a folder of images put
    under ``s3://<bucket>/<prefix>/batch/input/<folder>-<id>/``."""
    store = store_of(home)
    if url.startswith("s3://"):
        if not store.objects(url):
            raise CliError(f"BatchInputUrl {url} holds nothing in the local object store "
                           f"({store.path(url)}): pass a folder of images or put them there")
        return url
    folder = Path(url).expanduser()
    if not folder.is_dir():
        raise CliError(f"BatchInputUrl {url} is neither an s3:// prefix nor a folder; a zip is "
                       f"scored by python -m pipelines.batch --input {url}")
    identity = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    uri = f"s3://{bucket}/{prefix}/batch/input/{folder.resolve().name[:40]}-{identity}/"
    if not store.put_folder(folder, uri):
        raise CliError(f"BatchInputUrl {url}: the folder holds no files")
    return uri


def write_definition(definition: dict, path: str) -> None:
    Path(path).write_text(json.dumps(definition, indent=2, sort_keys=True) + "\n")


def stage_input(url: str, home: Path, bucket: str, prefix: str) -> tuple[str, str]:
    """``(s3 URI, content fingerprint)`` of InputDataUrl staged into the local store."""
    from pipelines.data.stage import local_files, stage
    from pipelines.local import inputs

    if url.startswith("s3://") and url.startswith(f"s3://{bucket}/"):
        store = store_of(home)
        if not store.objects(url):
            raise CliError(f"InputDataUrl {url} is not in the local object store "
                           f"({store.path(url)})")
        return url, store.content_digest(url)
    if "://" in url and not url.startswith(("http://", "https://", "s3://")):
        raise CliError(f"InputDataUrl {url}: the scheme is not supported; give {SCHEMES}")
    try:
        source = inputs.resolve(url, home / "cache")
    except inputs.InputError as exc:
        raise CliError(str(exc)) from None
    identity = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    key_prefix = f"{prefix.strip('/')}/data/{source.name[:40] or 'input'}-{identity}/"
    files = local_files(str(source), str(home / "cache"), None)
    store = store_of(home)
    s3 = local_boto_session(store).client("s3")
    stage(s3, files, bucket, key_prefix, replace=True)
    uri = f"s3://{bucket}/{key_prefix}"  # a zip alone under it: Preprocess reads it
    return uri, store.content_digest(uri)


def run_local(args, home: Path, params: dict, *, echo, tracking_uri: str | None):
    """Build (or read) the definition, stage the input, run it: the engine's RunResult."""
    from pipelines.local.engine import LocalEngine, check_definition, resolve_parameters
    from pipelines.run import default_pipeline_name

    default_pipeline_name(args)
    prefix = args.prefix.strip("/")
    if args.definition:
        try:
            definition = json.loads(Path(args.definition).read_text())
            if isinstance(definition, dict) and isinstance(definition.get("PipelineDefinition"),
                                                           str):
                # describe-pipeline(-definition-for-execution) wraps it as a string
                definition = json.loads(definition["PipelineDefinition"])
        except (OSError, ValueError) as exc:
            raise CliError(f"--definition {args.definition}: cannot read it as JSON ({exc})"
                           ) from None
        if not isinstance(definition, dict):
            raise CliError(f"--definition {args.definition}: not a pipeline definition (a JSON "
                           f"object with Steps)")
        declared = {p["Name"] for p in definition.get("Parameters") or []}
        url = params.get("InputDataUrl")
    else:
        definition = build_definition(args, home)
        declared = {p.name for p in spec.PARAMETERS}
        url = params.get("InputDataUrl") or "sklearn-digits"
    if args.batch:
        url = None  # (no InputDataUrl)
        if "BatchInputUrl" in params:
            staged = stage_batch_input(str(params["BatchInputUrl"]), home,
                                       args.bucket or LOCAL_BUCKET, prefix)
            params = {**params, "BatchInputUrl": staged}
        else:
            default = next(p["DefaultValue"] for p in definition["Parameters"]
                           if p["Name"] == "BatchInputUrl")
            stage_batch_input(default, home, args.bucket or LOCAL_BUCKET, prefix)
    check_definition(definition)  # what the engine cannot run: named before anything runs
    resolve_parameters(definition, {k: v for k, v in params.items() if k != "InputDataUrl"})
    if args.definition_out:
        write_definition(definition, args.definition_out)
        echo(f"wrote the definition of {args.pipeline_name} to {args.definition_out}")
    lineage = {"code_version": spec.scripts_digest(spec.SCRIPTS_DIR)}
    if url and "InputDataUrl" in declared:
        bucket = _bucket_of(definition) or args.bucket or LOCAL_BUCKET
        staged, digest = stage_input(str(url), home, bucket, prefix)
        if staged != url:
            echo(f"staged InputDataUrl {url} as {staged}")
        params = {**params, "InputDataUrl": staged}
        lineage.update(input=str(url), data_fingerprint=f"sha256:{digest}")
    if not args.definition and not args.batch:
        params = {**approved_version(args, home, definition, echo), **params}
    engine = LocalEngine(home, echo=echo, tracking_uri=tracking_uri)
    return engine.run(definition, params, pipeline_name=args.pipeline_name, lineage=lineage)


def approved_version(args, home: Path, definition: dict, echo) -> dict:
    """ApprovedModelDataUrl and ApprovedModelVersion: the local registry's newest Approved
    version (its archive put in the store), as --start passes SageMaker's; the placeholder
    the default points to is written too."""
    from pipelines import transform

    bucket = _bucket_of(definition) or args.bucket or LOCAL_BUCKET
    prefix = args.prefix.strip("/")
    folder, name, body = spec.NO_APPROVED_VERSION
    placeholder = store_of(home).path(f"s3://{bucket}/{prefix}/{folder}/{name}")
    if not placeholder.is_file() or placeholder.read_bytes() != body:  # (kept: the step
        placeholder.parent.mkdir(parents=True, exist_ok=True)  # cache keys on its mtime)
        placeholder.write_bytes(body)
    found = transform.approved_for_comparison(lambda: transform.local_version(
        home, args.model_package_group, bucket, prefix, "local", None))
    if found:
        echo(f"Evaluate compares the new model with {args.model_package_group} version "
             f"{found['ApprovedModelVersion']} (Approved)")
    return found


def _bucket_of(definition: dict) -> str | None:
    """The bucket of the definition's default InputDataUrl (where its data would be)."""
    for p in definition.get("Parameters") or []:
        value = p.get("DefaultValue")
        if p["Name"] == "InputDataUrl" and isinstance(value, str) and value.startswith("s3://"):
            return value[5:].split("/", 1)[0]
    return None


def _tags(args) -> list:
    from pipelines.run import parse_pairs

    return [{"Key": k, "Value": v} for k, v in parse_pairs(args.tag, "--tag").items()]
