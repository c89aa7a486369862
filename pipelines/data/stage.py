"""Put a data set into S3 for the pipeline (the "upload the data to S3" step).

    python -m pipelines.data.stage dogImages                 # download the dogImages zip, upload
    python -m pipelines.data.stage ./my-images/              # a local image folder
    python -m pipelines.data.stage ./photos.zip              # a local zip (Preprocess reads zips)
    python -m pipelines.data.stage https://host/data.zip     # any http(s) zip
    python -m pipelines.data.stage sklearn-digits            # small offline data, for a try-out

The default destination, s3://<bucket>/<prefix>/data/, is the pipeline's default InputDataUrl.
Files already there with the same content are not uploaded again; a destination holding other
files is refused unless --replace (which deletes them). Prints the InputDataUrl to use.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from pipelines import spec
from pipelines.aws import CliError
from pipelines.data.download import DownloadError, fetch, sha256_of

DOG_IMAGES_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
SHORTCUTS = {"dogImages": DOG_IMAGES_URL}
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dogbreed"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.data.stage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="folder, .zip, http(s) URL, dogImages or sklearn-digits")
    p.add_argument("--dest", help="S3 URI (default: s3://<bucket>/<prefix>/data/)")
    p.add_argument("--bucket")
    p.add_argument("--prefix", default=spec.DEFAULT_PREFIX)
    p.add_argument("--region")
    p.add_argument("--profile")
    p.add_argument("--replace", action="store_true",
                   help="delete other files under the destination")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where downloads are kept")
    p.add_argument("--sha256", help="expected checksum of a downloaded file")
    return p


def local_files(source: str, workdir: str, args) -> list[tuple[Path, str]]:
    """(local path, key under the destination) for everything to upload."""
    if source in SHORTCUTS:
        source = SHORTCUTS[source]
    if source == "sklearn-digits":
        from pipelines.data.sample import render_sklearn_digits

        source = str(render_sklearn_digits(Path(workdir) / "digits"))
    if source.startswith(("http://", "https://")):
        try:
            path = fetch(source, Path(args.cache_dir) / "downloads", args.sha256)
        except DownloadError as exc:
            raise CliError(str(exc)) from None
        name = os.path.basename(source.split("?")[0]) or "data.zip"
        return [(path, name)]
    path = Path(source)
    if path.is_file():
        return [(path, path.name)]
    if path.is_dir():
        files = [(f, f.relative_to(path).as_posix()) for f in sorted(path.rglob("*"))
                 if f.is_file() and not any(part.startswith(".")
                                            for part in f.relative_to(path).parts)]
        if not files:
            raise CliError(f"{path} holds no files to upload")
        return files
    raise CliError(f"{source} is not a folder, a file, an http(s) URL, or one of "
                   f"{', '.join([*SHORTCUTS, 'sklearn-digits'])}")


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise CliError(f"--dest {uri!r} must be an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, (key.rstrip("/") + "/") if key else ""


def stage(s3, files: list[tuple[Path, str]], bucket: str, prefix: str, replace: bool) -> dict:
    existing = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            existing[obj["Key"]] = obj["Size"]
    wanted = {prefix + key: path for path, key in files}
    extra = sorted(set(existing) - set(wanted))
    if extra and not replace:
        raise CliError(f"s3://{bucket}/{prefix} already holds {len(extra)} other file(s) "
                       f"(e.g. {extra[0]}); the pipeline would read them too. Pass --replace "
                       f"to delete them, or --dest another prefix")
    counts = {"uploaded": 0, "unchanged": 0, "deleted": 0}
    for key, path in wanted.items():
        digest = sha256_of(path)
        if key in existing and existing[key] == path.stat().st_size:
            head = s3.head_object(Bucket=bucket, Key=key)
            if head.get("Metadata", {}).get("sha256") == digest:
                counts["unchanged"] += 1
                continue
        s3.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}})
        counts["uploaded"] += 1
    for start in range(0, len(extra), 1000):
        s3.delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": k} for k in extra[start:start + 1000]]})
        counts["deleted"] += len(extra[start:start + 1000])
    return counts


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from pipelines.aws import exit_code

    return exit_code(lambda: stage_command(args))


def stage_command(args) -> int:
    from pipelines.aws import boto_session, resolve_bucket

    with tempfile.TemporaryDirectory(prefix="stage-") as workdir:
        files = local_files(args.source, workdir, args)
        session = boto_session(args.region, args.profile)
        if args.dest:
            bucket, prefix = split_s3(args.dest)
            resolve_bucket(session, bucket)
        else:
            bucket = resolve_bucket(session, args.bucket)
            prefix = f"{args.prefix.strip('/')}/data/"
        counts = stage(session.client("s3"), files, bucket, prefix, args.replace)
    print(f"{counts['uploaded']} uploaded, {counts['unchanged']} unchanged, "
          f"{counts['deleted']} deleted")
    # Preprocess reads a prefix of image folders, or a prefix holding one zip
    print(f"InputDataUrl=s3://{bucket}/{prefix}")
    return 0


if __name__ == "__main__":
    from pipelines import cli

    cli.run(main)
