"""A Batch Transform job, run here: what SageMaker's transform does with the model's container.

    python transform.py --request request.json --model model.tar.gz --store <home>/s3 --workdir DIR

Run by the engine (as a job, under guard.py) with the model's Environment and the job's
``Environment`` in its environment, as SageMaker starts the container. For each object under
``TransformInput``'s S3 prefix (``S3DataType`` S3Prefix; ``SplitType`` None and
``BatchStrategy`` SingleRecord: the whole object is one request) it calls the model's own
handlers as the inference toolkit does (``input_fn`` with the ``ContentType``, ``predict_fn``,
``output_fn`` with the ``Accept``), and writes the answer to
``<S3OutputPath>/<the object's key below the input prefix's folder>.out``. An object over
``MaxPayloadInMB`` or one the handlers refuse gets no ``.out``, the others go on, and the job
fails naming them, as SageMaker's does. The model's ``ERRORS_IN_BODY=true`` (our transform
jobs set it) makes the handlers answer a refused image with ``{"error": ...}`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--request", required=True)
    p.add_argument("--model", required=True, help="the model's model.tar.gz")
    p.add_argument("--store", required=True, help="the local object store's root")
    p.add_argument("--workdir", required=True)
    args = p.parse_args(argv)
    request = json.loads(Path(args.request).read_text())

    from pipelines.deploy.server import load_handlers
    from pipelines.local.objectstore import ObjectStore, split_uri

    store = ObjectStore(args.store)
    source = request["TransformInput"]
    uri = source["DataSource"]["S3DataSource"]["S3Uri"]
    content_type = source.get("ContentType", "application/octet-stream")
    accept = request["TransformOutput"].get("Accept", "application/json")
    output = request["TransformOutput"]["S3OutputPath"].rstrip("/")
    limit = request.get("MaxPayloadInMB", 6) * 2**20
    bucket, prefix = split_uri(uri)
    folder = prefix[:prefix.rfind("/") + 1]  # keys are named below the prefix's folder
    objects = [(path.relative_to(store.root / bucket).as_posix()[len(folder):], path)
               for _, path in store.objects(uri)]
    if not objects:
        return _fail(f"no objects under {uri}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        handlers, model = load_handlers(args.model, scratch)
        failed = []
        for name, path in objects:
            size = path.stat().st_size
            if size > limit:
                failed.append(f"{name}: {size:,} bytes, over MaxPayloadInMB")
                continue
            try:
                data = handlers.input_fn(path.read_bytes(), content_type)
                answer = handlers.output_fn(handlers.predict_fn(data, model), accept)
            except Exception as exc:  # noqa: BLE001 - the toolkit answers it as an error
                failed.append(f"{name}: {getattr(exc, 'message', None) or exc}")
                continue
            target = store.path(f"{output}/{name}.out")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(answer if isinstance(answer, str) else answer.decode())
    print(f"{len(objects) - len(failed)} of {len(objects)} objects transformed into {output}/",
          flush=True)
    if failed:
        for line in failed:
            print(f"failed: {line}", flush=True)
        return _fail(f"{len(failed)} of {len(objects)} objects failed (first: {failed[0]}); "
                     f"see the job's log")
    return 0


def _fail(reason: str) -> int:
    out = Path(os.environ.get("SM_OUTPUT_DIR", "."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "failure").write_text(f"ClientError: {reason}")
    print(reason, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
