"""Serving handlers for SageMaker's PyTorch inference container (and our local endpoint).

Copied into ``<model dir>/code/`` with the ``breedkit`` package, so model.tar.gz serves alone.

Requests:
- ``image/jpeg``, ``image/png``, ``application/x-image``: the raw image bytes.
- ``application/json``: ``{"image": "<base64>"}``, ``{"images": ["<base64>", ...]}`` or
  ``{"instances": ["<base64>" | {"b64": "<base64>"}, ...]}``; optional ``"top_k": N``.

Response (``application/json``), one entry per image::

    {"predictions": [{"label": "Affenpinscher", "class": "001.Affenpinscher", "index": 0,
                      "probability": 0.93, "top_k": [{"label": ..., "class": ...,
                      "index": ..., "probability": ...}, ...]}]}

Errors a client can fix raise exceptions carrying an HTTP status (400, 406, 413, 415), which
the SageMaker inference toolkit turns into that response code with the message. URLs are never
fetched: only image bytes are accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from breedkit.images import ImageDecodeError, decode_tensor  # noqa: E402
from breedkit.model import display_label, load_model  # noqa: E402
from breedkit.transforms import eval_size, eval_transform_for  # noqa: E402

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
DEFAULT_TOP_K = int(os.environ.get("TOP_K", "5"))
MAX_IMAGES = int(os.environ.get("MAX_IMAGES_PER_REQUEST", "64"))

try:  # present in SageMaker's serving containers; optional elsewhere
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:  # pragma: no cover - exercised where the toolkit is absent
    class _ToolkitError(Exception):
        def __init__(self, status_code, message, phrase):
            self.status_code, self.message, self.phrase = status_code, message, phrase
            super().__init__(status_code, message, phrase)


class RequestError(_ToolkitError):
    """A client error: the serving container answers with ``status_code`` and the message."""

    def __init__(self, status_code: int, message: str):
        super().__init__(status_code, message, message)

    def __str__(self) -> str:
        return self.message


class LoadedModel:
    """What model_fn returns: the network, its device, transform and class names."""

    def __init__(self, model, config: dict, device: torch.device):
        self.model = model
        self.config = config
        self.device = device
        self.transform = eval_transform_for(config)
        self.class_names = config["class_names"]
        self.labels = [display_label(c) for c in self.class_names]


# the shorter side the loaded model's transform resizes to: large JPEGs are decoded at a
# reduced scale that still covers it (set by model_fn, which the toolkit calls first)
_decode_draft: int | None = None


def model_fn(model_dir: str) -> LoadedModel:
    global _decode_draft
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # horizontal-flip TTA as evaluate.py's default does; TTA_HFLIP=true/false (an endpoint
    # environment variable) overrides it
    model, config = load_model(model_dir, device, tta_hflip={"true": True, "false": False}.get(
        os.environ.get("TTA_HFLIP", "").strip().lower()))
    model.to(memory_format=torch.channels_last)
    _decode_draft = eval_size(config)[1]
    return LoadedModel(model, config, device)


def _b64(item, where: str) -> bytes:
    if isinstance(item, dict):
        item = item.get("b64")
    if not isinstance(item, str) or not item:
        raise RequestError(400, f"{where}: expected a base64-encoded image string")
    if item.startswith(("http://", "https://", "s3://", "file:")):
        raise RequestError(400, f"{where}: URLs are not fetched; send the image bytes, "
                                f"base64-encoded")
    if item.startswith("data:") and "," in item:  # data URL: data:image/png;base64,....
        item = item.split(",", 1)[1]
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where}: not valid base64") from None


def _json_images(body) -> tuple[list[bytes], int | None]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError(400, 'JSON body must be an object such as {"image": "<base64>"}')
    top_k = doc.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise RequestError(400, f'"top_k" must be a positive integer, got {top_k!r}')
    if "image" in doc:
        items = [doc["image"]]
    elif isinstance(doc.get("images"), list):
        items = doc["images"]
    elif isinstance(doc.get("instances"), list):
        items = doc["instances"]
    else:
        raise RequestError(400, 'JSON body needs "image" (base64 string), "images" or '
                                '"instances" (lists of base64 strings)')
    if not items:
        raise RequestError(400, "no images in the request")
    if len(items) > MAX_IMAGES:
        raise RequestError(413, f"{len(items)} images in one request; the limit is {MAX_IMAGES}")
    return [_b64(item, f"image {i}") for i, item in enumerate(items)], top_k


def input_fn(request_body, request_content_type: str):
    """Decode the request into a list of uint8 image tensors (and an optional top_k)."""
    content_type = (request_content_type or "").split(";")[0].strip().lower()
    if isinstance(request_body, str):
        request_body = request_body.encode("utf-8")
    if not request_body:
        raise RequestError(400, "empty request body: send an image")
    if content_type in IMAGE_TYPES:
        blobs, top_k = [bytes(request_body)], None
    elif content_type == JSON_TYPE:
        blobs, top_k = _json_images(request_body)
    else:
        raise RequestError(415, f"unsupported content type {request_content_type!r}; use one of "
                                f"{', '.join(IMAGE_TYPES + (JSON_TYPE,))}")
    images = []
    for i, blob in enumerate(blobs):
        try:
            images.append(decode_tensor(blob, draft=_decode_draft))
        except ImageDecodeError as exc:
            where = "image" if len(blobs) == 1 else f"image {i}"
            status = 413 if "limit" in str(exc) or "bomb" in str(exc) else 400
            raise RequestError(status, f"{where}: {exc}") from None
    return {"images": images, "top_k": top_k}


@torch.inference_mode()
def predict_fn(data, model: LoadedModel):
    """Top-k classes and probabilities for each image, as plain Python lists."""
    batch = torch.stack([model.transform(image) for image in data["images"]])
    logits = model.model(batch.to(model.device))
    probs = torch.softmax(logits.float(), dim=1)
    k = min(data.get("top_k") or DEFAULT_TOP_K, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    results = []
    for row_values, row_indices in zip(values.tolist(), indices.tolist()):
        top = [{"label": model.labels[i], "class": model.class_names[i], "index": i,
                "probability": round(p, 6)} for p, i in zip(row_values, row_indices)]
        results.append({**top[0], "top_k": top})
    return results


def output_fn(prediction, accept: str = JSON_TYPE):
    accept = (accept or JSON_TYPE).split(";")[0].strip().lower()
    if accept not in (JSON_TYPE, "*/*"):
        raise RequestError(406, f"cannot answer in {accept!r}; accept {JSON_TYPE}")
    return json.dumps({"predictions": prediction})
