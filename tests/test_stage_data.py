"""Data staging into (moto's) S3, and the resumable, checksummed download behind it."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile

import boto3
import pytest

from conftest import make_image_folder
from pipelines.data import stage as stage_data
from pipelines.data.download import DownloadError, cache_name, fetch

BUCKET = "stage-bucket"


@pytest.fixture
def s3(fake_aws):
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


def keys(s3, prefix="dogbreed/data/"):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get(
        "Contents", []))


def test_folder_is_uploaded_once_and_other_content_is_protected(s3, tmp_path, capsys):
    folder = make_image_folder(tmp_path / "images", 2)
    (folder / ".DS_Store").write_text("finder")
    args = ["--bucket", BUCKET, "--cache-dir", str(tmp_path / "cache")]
    assert stage_data.main([str(folder), *args]) == 0
    out = capsys.readouterr().out
    assert "6 uploaded, 0 unchanged" in out
    assert f"InputDataUrl=s3://{BUCKET}/dogbreed/data/" in out
    assert len(keys(s3)) == 6 and all(k.endswith(".jpg") for k in keys(s3))
    assert stage_data.main([str(folder), *args]) == 0
    assert "0 uploaded, 6 unchanged" in capsys.readouterr().out

    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/x.jpg", b"not really")
    assert stage_data.main([str(archive), *args]) == 2
    err = capsys.readouterr().err
    assert "already holds 6 other file(s)" in err and "--replace" in err
    assert len(keys(s3)) == 6  # nothing deleted
    assert stage_data.main([str(archive), *args, "--replace"]) == 0
    assert keys(s3) == ["dogbreed/data/other.zip"]


def test_bad_sources_and_destinations(s3, tmp_path, capsys):
    assert stage_data.main([str(tmp_path / "missing"), "--bucket", BUCKET]) == 2
    assert "not a folder, a file" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    (tmp_path / "d/x.txt").write_text("x")
    assert stage_data.main([str(tmp_path / "d"), "--dest", "s3://nope-bucket/x/"]) == 2
    assert "nope-bucket does not exist" in capsys.readouterr().err
    assert stage_data.main(["http://127.0.0.1:9/data.zip", "--bucket", BUCKET,
                            "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "cannot download http://127.0.0.1:9/data.zip" in err and "Traceback" not in err


class RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    requests: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        RangeHandler.requests.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.payload = bytes(range(256)) * 4000
    RangeHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/dogImages.zip"
    httpd.shutdown()


def test_download_resumes_and_checks_the_checksum(server, tmp_path):
    payload = RangeHandler.payload
    digest = hashlib.sha256(payload).hexdigest()
    part = tmp_path / (cache_name(server) + ".part")
    part.write_bytes(payload[:100_000])  # an interrupted earlier download
    path = fetch(server, tmp_path, sha256=digest, progress=False)
    assert path.read_bytes() == payload
    assert RangeHandler.requests == ["bytes=100000-"]
    assert not part.exists()
    assert fetch(server, tmp_path, sha256=digest) == path  # cached: no new request
    assert len(RangeHandler.requests) == 1
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch(server + "?v=2", tmp_path, sha256="0" * 64, progress=False)
    assert not list(tmp_path.glob(cache_name(server + "?v=2") + "*"))  # corrupt file removed
