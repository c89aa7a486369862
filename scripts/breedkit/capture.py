"""SageMaker's data-capture records: what an endpoint writes for each request, and what the
monitor (``monitor.py``) reads back.

A SageMaker endpoint with data capture on writes JSON lines under
``<DestinationS3Uri>/<endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/<file>.jsonl``, one record a
request::

    {"captureData": {
        "endpointInput":  {"observedContentType": "image/jpeg", "mode": "INPUT",
                           "data": "<base64>", "encoding": "BASE64"},
        "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                           "data": "{\"predictions\": [...]}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceTime": "2026-12-06T15:00:00Z"},
     "eventVersion": "0"}

The local endpoint (``pipelines.deploy.server --capture-dir``) writes the same records in the same
layout under the home. It also captures the requests it refused (the output is our error JSON,
``{"error": ..., "status": 4xx/5xx}``): SageMaker captures only what the model answered, so there
the error rate comes from the endpoint's CloudWatch metrics instead.

Reading is tolerant: a line that is truncated, not JSON or not a capture record is reported (file,
line, reason) and skipped, never a crash. Nothing here decodes an image fully: ``image_stats``
decodes a JPEG at 1/8 scale or less (Pillow's draft mode) to a 64-pixel thumbnail.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

VARIANT = "AllTraffic"  # the production variant the deploys create
STATS = ("brightness", "contrast", "saturation", "red", "green", "blue")
THUMBNAIL = 64  # the side image statistics are computed at
MAX_LINE_BYTES = 64 * 2**20  # a request body is at most 16 MB (base64: 22 MB); longer is damage
_HOUR_DIR = re.compile(r"(\d{4})/(\d{2})/(\d{2})/(\d{2})$")


# --- writing -----------------------------------------------------------------------------------

def iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_record(body: bytes, content_type: str, answer: str, answer_type: str = "application/json",
                when: datetime | None = None, event_id: str | None = None) -> dict:
    """One capture record, as SageMaker writes it (input as base64, output as JSON text)."""
    return {"captureData": {
        "endpointInput": {"observedContentType": content_type, "mode": "INPUT",
                          "data": base64.b64encode(body).decode("ascii"), "encoding": "BASE64"},
        "endpointOutput": {"observedContentType": answer_type, "mode": "OUTPUT",
                           "data": answer, "encoding": "JSON"}},
        "eventMetadata": {"eventId": event_id or str(uuid.uuid4()),
                          "inferenceTime": iso(when or datetime.now(timezone.utc))},
        "eventVersion": "0"}


def hour_dir(root: str | os.PathLike, endpoint: str, when: datetime) -> Path:
    """``<root>/<endpoint>/AllTraffic/yyyy/mm/dd/hh``: SageMaker's layout."""
    when = when.astimezone(timezone.utc)
    return Path(root) / endpoint / VARIANT / when.strftime("%Y/%m/%d/%H")


# --- reading -----------------------------------------------------------------------------------

def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC)."""
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def capture_files(root: str | os.PathLike, since: datetime | None = None,
                  until: datetime | None = None) -> list[Path]:
    """The ``*.jsonl`` files under ``root``, sorted; a file in an hour folder (``.../yyyy/mm/dd/
    hh/``) that cannot hold a record of [since, until) is left out unread. A folder is named by
    when its file was written, which can be after its records' times: the hour after ``until``
    is read too."""
    found = []
    for path in sorted(Path(root).rglob("*.jsonl")):
        hour = _HOUR_DIR.search(path.parent.as_posix())
        if hour and (since or until):
            start = datetime(*map(int, hour.groups()), tzinfo=timezone.utc)
            if (since and start + timedelta(hours=1) <= since) or \
                    (until and start >= until + timedelta(hours=1)):
                continue
        found.append(path)
    return found


@dataclass
class Skipped:
    file: str
    line: int
    reason: str


@dataclass
class Event:
    """One captured request: its time, input and output, as the record holds them. The input
    is decoded only when ``body`` is read (most records are never looked at that closely)."""
    when: datetime
    content_type: str
    captured_input: dict
    output: str
    where: tuple[str, int] = field(default=("", 0))

    @property
    def body(self) -> bytes:
        """The request's bytes (b"" when the record's input does not decode)."""
        try:
            return _decoded(self.captured_input)
        except ValueError:
            return b""


def read_events(files: list[Path], skipped: list[Skipped]) -> Iterator[Event]:
    """Every well-formed record of ``files``; each bad line is added to ``skipped``."""
    for path in files:
        try:
            handle = open(path, "rb")
        except OSError as exc:
            skipped.append(Skipped(str(path), 0, f"cannot be read: {exc.strerror or exc}"))
            continue
        with handle:
            for number, line in enumerate(_lines(handle), 1):
                if not line.strip():
                    continue
                event, reason = _event(line)
                if event is None:
                    skipped.append(Skipped(str(path), number, reason))
                else:
                    event.where = (str(path), number)
                    yield event


def _lines(handle) -> Iterator[bytes]:
    """The file's lines; one longer than MAX_LINE_BYTES is never held whole: its first
    MAX_LINE_BYTES + 1 bytes stand for it (and are reported as too long)."""
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:  # skip the rest of it
                rest = handle.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
        yield line


def _event(line: bytes) -> tuple[Event | None, str]:
    if len(line) > MAX_LINE_BYTES:
        return None, f"a line over {MAX_LINE_BYTES:,} bytes (a request is at most 16 MB)"
    try:
        record = json.loads(line)
        data = record["captureData"]
        given, answered = data["endpointInput"], data.get("endpointOutput") or {}
        when = parse_time(record["eventMetadata"]["inferenceTime"])
        if not isinstance(given, dict):
            raise TypeError("endpointInput is not an object")
        output = _decoded(answered).decode("utf-8", "replace") if answered else ""
    except RecursionError:
        return None, "not a capture record (JSON nested too deeply)"
    except ValueError as exc:
        if not line.endswith(b"\n"):
            return None, "truncated: the file ends inside a record"
        return None, f"not a JSON capture record ({str(exc)[:80]})"
    except (KeyError, TypeError, AttributeError):
        return None, ("not a capture record (expects captureData.endpointInput and "
                      "eventMetadata.inferenceTime)")
    return Event(when, str(given.get("observedContentType", "")), given, output), ""


def _decoded(part: dict) -> bytes:
    data = part.get("data", "")
    if part.get("encoding", "").upper() == "BASE64":
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("its base64 data does not decode") from None
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


# --- what a record holds -----------------------------------------------------------------------

def request_images(body: bytes, content_type: str) -> list[bytes]:
    """The encoded images of a request in any of the serving handler's content types (raw
    image bytes, or JSON with ``image``/``images``/``instances`` of base64 strings); [] for
    anything else."""
    kind = content_type.split(";")[0].strip().lower()
    if kind.startswith("image/") or kind == "application/x-image":
        return [body]
    if kind != "application/json":
        return []
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return []
    if not isinstance(doc, dict):
        return []
    items = [doc["image"]] if "image" in doc else doc.get("images") or doc.get("instances") or []
    blobs = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            item = item.get("b64")
        if isinstance(item, str):
            try:
                blobs.append(base64.b64decode(item.split(",", 1)[-1], validate=False))
            except (binascii.Error, ValueError):
                continue
    return blobs


def predictions(output: str) -> tuple[list[tuple[int, float]] | None, int | None]:
    """(class index, top-1 probability) per image of an answer, and None; or None and the
    HTTP status of an error answer (500 when the answer is not one of ours)."""
    try:
        doc = json.loads(output)
    except ValueError:
        return None, 500
    if isinstance(doc, dict) and isinstance(doc.get("predictions"), list):
        try:
            return [(int(p["index"]), float(p["probability"])) for p in doc["predictions"]], None
        except (KeyError, TypeError, ValueError):
            return None, 500
    status = doc.get("status") if isinstance(doc, dict) else None
    return None, status if isinstance(status, int) else 500


def image_stats(blob: bytes) -> dict | None:
    """Size and pixel statistics of one encoded image (None if it is not one): width, height
    (as sent), and brightness (mean luma), contrast (luma's standard deviation), saturation,
    red, green, blue (means), all in [0, 1], from a 64-pixel thumbnail."""
    import numpy as np
    from PIL import Image

    from breedkit.images import ImageDecodeError, open_rgb

    try:
        with Image.open(io.BytesIO(blob)) as header:
            width, height = header.size
        image = open_rgb(io.BytesIO(blob), draft=THUMBNAIL)
    except (ImageDecodeError, OSError, ValueError, Image.DecompressionBombError):
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    top, bottom = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.where(top > 0, (top - bottom) / np.maximum(top, 1e-6), 0.0)
    red, green, blue = rgb.reshape(-1, 3).mean(axis=0)
    return {"width": width, "height": height, "brightness": float(luma.mean()),
            "contrast": float(luma.std()), "saturation": float(saturation.mean()),
            "red": float(red), "green": float(green), "blue": float(blue)}
