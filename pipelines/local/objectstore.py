"""The local engine's object store: ``s3://BUCKET/KEY`` is the file ``<home>/s3/BUCKET/KEY``.

The SageMaker SDK builds the definition with a boto3 session whose S3 calls this module answers
from that folder (botocore's ``before-send`` event: the request is answered in the process and
never sent). So the code the SDK uploads while building (each job's ``sourcedir.tar.gz``,
``runproc.sh``) lands in the store, and ``pipelines.data.stage`` stages local data into it with
the same calls it makes against S3. Every other AWS call is refused with a clear error: a local
run reaches no AWS service.

Answered: ListBuckets, HeadBucket, CreateBucket, PutObject, GetObject, HeadObject,
ListObjectsV2, DeleteObject(s); user metadata (``x-amz-meta-*``) is kept beside each object.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import tempfile
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

LOCAL_REGION = "us-east-1"
LOCAL_ACCOUNT = "000000000000"
LOCAL_ROLE = f"arn:aws:iam::{LOCAL_ACCOUNT}:role/DogBreedLocalEngine"
_META = ".meta"  # the folder, beside the buckets, with each object's user metadata


class StoreError(Exception):
    """A path that is not in the store, or a key the store cannot hold."""


class ObjectStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # -- S3 URIs and paths ------------------------------------------------------------------

    def path(self, uri: str) -> Path:
        """The file or folder that holds ``s3://bucket/key``."""
        bucket, key = split_uri(uri)
        return self._object(bucket, key.rstrip("/")) if key else self.root / bucket

    def _object(self, bucket: str, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not _safe_name(bucket) or any(p in (".", "..") for p in parts) or not parts:
            raise StoreError(f"s3://{bucket}/{key} cannot be stored locally (empty, '.' or "
                             f"'..' parts)")
        return self.root.joinpath(bucket, *parts)

    def objects(self, uri: str) -> list[tuple[str, Path]]:
        """``(key relative to the prefix, file)`` for each object under an S3Prefix, as
        SageMaker copies them into a job: an exact object is its base name."""
        bucket, prefix = split_uri(uri)
        base = self.root / bucket
        if not base.is_dir():
            return []
        found = []
        for key, path in self._keys(bucket, prefix):
            rel = key[len(prefix):].lstrip("/") or key.rsplit("/", 1)[-1]
            found.append((rel, path))
        return found

    def _keys(self, bucket: str, prefix: str):
        base = self.root / bucket
        start = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base
        if not start.is_dir():
            return
        for path in sorted(start.rglob("*")):
            if path.is_file() and not path.name.startswith(".dogbreed-"):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield key, path

    def fingerprint(self, uri: str) -> str:
        """Keys, sizes and modification times under an S3 prefix (changes when data does)."""
        digest = hashlib.sha256()
        for rel, path in self.objects(uri):
            st = path.stat()
            digest.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def content_digest(self, uri: str) -> str:
        """sha256 over the keys and contents under a prefix (the sha256 that staging recorded
        with each object, else the bytes)."""
        bucket, prefix = split_uri(uri)
        digest = hashlib.sha256()
        for key, path in self._keys(bucket, prefix):
            sha = self._metadata(bucket, key).get("sha256")
            if not sha:
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
            digest.update(f"{key[len(prefix):]}\t{sha}\n".encode())
        return digest.hexdigest()

    def put_file(self, source: Path, uri: str) -> None:
        target = self.path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_copy(source, target)

    def put_folder(self, folder: Path, uri: str) -> int:
        """Upload every file under ``folder`` below the prefix ``uri``; the count."""
        count = 0
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                self.put_file(path, uri.rstrip("/") + "/" + path.relative_to(folder).as_posix())
                count += 1
        return count

    def download(self, uri: str, folder: Path) -> int:
        """Copy what an S3Prefix names into ``folder`` (hard links where the file system
        allows: a job that replaces a file never changes the store); the count."""
        found = self.objects(uri)
        for rel, path in found:
            dest = Path(folder) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                dest.unlink()
            try:
                os.link(path, dest)
            except OSError:
                shutil.copy2(path, dest)
        return len(found)

    # -- what botocore's S3 client sends ------------------------------------------------------

    def attach(self, boto_session) -> None:
        """Answer ``boto_session``'s AWS calls from this store (S3) or refuse them."""
        events = boto_session._session.get_component("event_emitter")
        events.register_first("before-send", self._answer)
        # a plain PutObject body (no aws-chunked encoding with checksum trailers)
        boto_session._session.set_config_variable("request_checksum_calculation",
                                                  "when_required")
        boto_session._session.set_config_variable("response_checksum_validation",
                                                  "when_required")

    def _answer(self, request, **kwargs):
        from botocore.awsrequest import AWSResponse

        url = urlsplit(request.url)
        host = url.hostname or ""
        if not host.startswith("s3.") and ".s3." not in host and not host.startswith("s3-"):
            service = host.split(".")[0]
            return _response(AWSResponse, request.url, 400, _error(
                "LocalEngine", f"the local engine answers S3 calls only; this run called "
                f"{service} ({request.method} {url.path})"))
        if ".s3." in host or (host.count(".") > 2 and not host.startswith("s3")):
            bucket, key = host.split(".s3")[0], unquote(url.path.lstrip("/"))
        else:
            bucket, _, key = unquote(url.path.lstrip("/")).partition("/")
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            status, headers, body = self._handle(request, bucket, key, query)
        except StoreError as exc:
            status, headers, body = 400, {}, _error("InvalidArgument", str(exc))
        return _response(AWSResponse, request.url, status, body, headers)

    def _handle(self, request, bucket: str, key: str, query: dict):
        method = request.method
        if not bucket:
            names = sorted(p.name for p in self.root.iterdir() if p.is_dir()
                           and p.name != _META) if self.root.is_dir() else []
            entries = "".join(f"<Bucket><Name>{escape(n)}</Name><CreationDate>"
                              f"2024-01-01T00:00:00.000Z</CreationDate></Bucket>" for n in names)
            return 200, {}, (f"<ListAllMyBucketsResult><Buckets>{entries}</Buckets>"
                             f"</ListAllMyBucketsResult>").encode()
        if not key:
            if method in ("PUT", "HEAD"):
                (self.root / bucket).mkdir(parents=True, exist_ok=True)
                return 200, {}, b""
            if method == "POST" and "delete" in query:
                return self._delete_many(bucket, _body_bytes(request))
            if method == "GET" and query.get("list-type") == ["2"]:
                return self._list(bucket, query)
            raise StoreError(f"unsupported bucket request {method} ?{'&'.join(query)}")
        if method == "PUT" and not query:
            return self._put(request, bucket, key)
        if method in ("GET", "HEAD") and not query:
            path = self._object(bucket, key)
            if not path.is_file():
                return 404, {}, _error("NoSuchKey", f"s3://{bucket}/{key} is not in the local "
                                                    f"object store ({path})")
            headers = {"Content-Length": str(path.stat().st_size),
                       "Last-Modified": formatdate(path.stat().st_mtime, usegmt=True),
                       "ETag": '"local"'}
            headers.update({f"x-amz-meta-{k}": v for k, v in self._metadata(bucket, key).items()})
            return 200, headers, (path.read_bytes() if method == "GET" else b"")
        if method == "DELETE" and not query:
            self._delete(bucket, key)
            return 204, {}, b""
        raise StoreError(f"the local object store does not support {method} with "
                         f"?{'&'.join(query)} (multipart uploads among them)")

    def _put(self, request, bucket: str, key: str):
        if request.headers.get("Content-Encoding", "") == "aws-chunked":
            raise StoreError("aws-chunked uploads are not supported by the local store")
        path = self._object(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=".dogbreed-", dir=path.parent)
        with os.fdopen(fd, "wb") as out:
            body = request.body
            if hasattr(body, "read"):
                shutil.copyfileobj(body, out, 1 << 20)
            elif body:
                out.write(body if isinstance(body, bytes) else body.encode())
        _replace_if_changed(Path(partial), path)
        metadata = {name[len("x-amz-meta-"):].lower(): _text(value)
                    for name, value in request.headers.items()
                    if name.lower().startswith("x-amz-meta-")}
        meta_path = self._meta_path(bucket, key)
        if metadata:
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            meta_path.write_text(json.dumps(metadata))
        elif meta_path.exists():
            meta_path.unlink()
        return 200, {"ETag": '"local"'}, b""

    def _meta_path(self, bucket: str, key: str) -> Path:
        return self.root / _META / self._object(bucket, key).relative_to(self.root)

    def _metadata(self, bucket: str, key: str) -> dict:
        path = self._meta_path(bucket, key)
        return json.loads(path.read_text()) if path.is_file() else {}

    def _delete(self, bucket: str, key: str) -> None:
        for path in (self._object(bucket, key), self._meta_path(bucket, key)):
            if path.is_file():
                path.unlink()

    def _delete_many(self, bucket: str, body: bytes):
        import xml.etree.ElementTree as ET

        root = ET.fromstring(body)
        keys = [el.text or "" for el in root.iter() if el.tag.endswith("Key")]
        for key in keys:
            self._delete(bucket, key)
        deleted = "".join(f"<Deleted><Key>{escape(k)}</Key></Deleted>" for k in keys)
        return 200, {}, f"<DeleteResult>{deleted}</DeleteResult>".encode()

    def _list(self, bucket: str, query: dict):
        prefix = query.get("prefix", [""])[0]
        after = query.get("continuation-token", query.get("start-after", [""]))[0]
        limit = int(query.get("max-keys", ["1000"])[0])
        keys = [(k, p) for k, p in self._keys(bucket, prefix) if k > after]
        page, more = keys[:limit], len(keys) > limit
        contents = "".join(
            f"<Contents><Key>{escape(k)}</Key><Size>{p.stat().st_size}</Size><ETag>\"local"
            f"\"</ETag><StorageClass>STANDARD</StorageClass><LastModified>"
            f"2024-01-01T00:00:00.000Z</LastModified></Contents>" for k, p in page)
        token = f"<NextContinuationToken>{escape(page[-1][0])}</NextContinuationToken>" \
            if more else ""
        body = (f"<ListBucketResult><Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}"
                f"</Prefix><KeyCount>{len(page)}</KeyCount><MaxKeys>{limit}</MaxKeys>"
                f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>{contents}{token}"
                f"</ListBucketResult>")
        return 200, {}, body.encode()


def split_uri(uri: str) -> tuple[str, str]:
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise StoreError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    if not _safe_name(bucket):
        raise StoreError(f"{uri!r} names no valid bucket")
    if any(part in (".", "..") for part in key.split("/")):
        raise StoreError(f"{uri!r}: a key with '.' or '..' parts cannot be stored locally")
    return bucket, key


def _safe_name(bucket: str) -> bool:
    return bool(bucket) and bucket not in (".", "..", _META) and "/" not in bucket


def _atomic_copy(source: Path, target: Path) -> None:
    """``source`` at ``target``, whole or not at all: a hard link where the file system allows
    (a job's outputs are not stored twice), else a copy."""
    fd, partial = tempfile.mkstemp(prefix=".dogbreed-", dir=target.parent)
    os.close(fd)
    try:
        os.unlink(partial)
        os.link(source, partial)
    except OSError:
        shutil.copy2(source, partial)
    _replace_if_changed(Path(partial), target)


def _replace_if_changed(partial: Path, target: Path) -> None:
    """Move ``partial`` into place, unless ``target`` holds the same bytes already: an object
    written again unchanged keeps its modification time, so a step's cache key (which reads
    sizes and times of its inputs) changes only when their content does."""
    if target.is_file() and (os.path.samefile(partial, target) or (
            target.stat().st_size == partial.stat().st_size and
            filecmp.cmp(partial, target, shallow=False))):
        partial.unlink()
        return
    os.replace(partial, target)


def _body_bytes(request) -> bytes:
    body = request.body
    if hasattr(body, "read"):
        return body.read()
    return body if isinstance(body, bytes) else (body or "").encode()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _error(code: str, message: str) -> bytes:
    return (f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>").encode()


class _Raw:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **kwargs):
        yield self._body

    def read(self, *args, **kwargs):
        body, self._body = self._body, b""
        return body


def _response(cls, url: str, status: int, body: bytes, headers: dict | None = None):
    return cls(url, status, {"Content-Type": "application/xml", **(headers or {})}, _Raw(body))


def local_boto_session(store: ObjectStore, region: str = LOCAL_REGION):
    """A boto3 session with placeholder credentials whose calls the store answers."""
    import boto3

    session = boto3.Session(aws_access_key_id="local", aws_secret_access_key="local",
                            region_name=region)
    store.attach(session)
    return session
