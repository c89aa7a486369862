"""InputDataUrl for the local engine: a folder, a .zip, an http(s) URL, an s3:// URI, or
``sklearn-digits``. Returns a local path and a cheap fingerprint for step caching.

Runs on one home share its cache: whatever a run downloads or renders there, it does under a
lock, so another run waits for the finished files instead of reading half-written ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from pathlib import Path

from pipelines.data.download import DownloadError, fetch


class InputError(Exception):
    pass


def resolve(url: str, cache: Path) -> Path:
    if not url:
        raise InputError("InputDataUrl is empty: pass --param InputDataUrl=<folder, .zip, URL, "
                         "s3:// URI or sklearn-digits>")
    if url == "sklearn-digits":
        target = cache / "sklearn-digits"
        with _locked(cache, "sklearn-digits"):
            if not (target / ".complete").is_file():
                _render_sample(target)
        return target
    if url.startswith(("http://", "https://")):
        try:
            with _locked(cache, "download-" + hashlib.sha256(url.encode()).hexdigest()[:16]):
                return fetch(url, cache / "downloads")
        except DownloadError as exc:
            raise InputError(str(exc)) from None
    if url.startswith("s3://"):
        with _locked(cache, "s3-" + hashlib.sha256(url.encode()).hexdigest()[:16]):
            return _from_s3(url, cache / "s3")
    path = Path(url).expanduser()
    if not path.exists():
        raise InputError(f"InputDataUrl {url} does not exist: pass a folder of images, a .zip, "
                         f"an http(s) or s3:// URL, or sklearn-digits")
    return path.resolve()


@contextlib.contextmanager
def _locked(cache: Path, name: str):
    """An exclusive lock for ``name`` in the cache, held across processes until the end."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def _render_sample(target: Path) -> None:
    """Render into a fresh folder, then move it into place: a run killed half-way leaves
    nothing that looks finished."""
    from pipelines.data.sample import render_sklearn_digits

    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    render_sklearn_digits(partial)
    (partial / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


def _from_s3(url: str, cache: Path) -> Path:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = url[5:].partition("/")
    target = cache / bucket / key.rstrip("/")
    try:
        s3 = boto3.client("s3")
        objects = [o for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=key) for o in page.get("Contents", [])]
        if not objects:
            raise InputError(f"nothing found at {url}")
        for obj in objects:
            rel = obj["Key"][len(key):].lstrip("/") if key else obj["Key"]
            dest = target / rel if rel else target
            if dest.is_file() and dest.stat().st_size == obj["Size"]:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(dest))
    except (ClientError, BotoCoreError) as exc:
        raise InputError(f"cannot download {url}: {exc}") from None
    return target


def fingerprint(path: Path) -> str:
    """Paths, sizes and modification times: changes when the data does (like make)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        digest.update(f"{os.path.relpath(f, path)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()
