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

Every image is decoded by ``breedkit.images.decode_tensor``, the decode of ``evaluate.py``'s
loader: RGB and greyscale JPEGs through torchvision (pixel-identical to Pillow's, in half the
time: 0.9 against 1.9 ms for a 500x375 photo on one core), every other image through
``open_rgb``, the function ``preprocess.py`` decodes training images with (alpha on white,
16-bit rescaled, an animation's first frame, EXIF orientation); then, for a model trained on
preprocessed images (``preprocess_size`` in its config), stored as preprocess.py stored them
(shorter side ``preprocess_size``, Lanczos, JPEG q95: ``breedkit.images.as_stored``), and resized
and cropped by the evaluation transform: the two resizes evaluation applied. One image at a time:
a request never holds more than one full-resolution image. Limits, checked on the headers before
anything is decoded (413 with the limit): ``MAX_IMAGE_PIXELS`` per image, ``MAX_REQUEST_PIXELS``
per request, ``MAX_IMAGES_PER_REQUEST`` images; JSON nested deeper than ``MAX_JSON_DEPTH``
levels is refused (400).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from breedkit.images import (ImageDecodeError, ImageTooLarge, as_stored,  # noqa: E402
                             decode_tensor, image_size)
from breedkit.model import display_label, load_model  # noqa: E402
from breedkit.transforms import eval_size, eval_transform_for  # noqa: E402

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_TYPE = "application/json"
DEFAULT_TOP_K = int(os.environ.get("TOP_K", "5"))
MAX_IMAGES = int(os.environ.get("MAX_IMAGES_PER_REQUEST", "64"))
# a 40 MP image decodes to 120 MB of RGB (more while alpha is composited); a request may hold
# about eight 12 MP phone photos. Checked on the headers, before any image is decoded.
MAX_IMAGE_PIXELS = int(os.environ.get("MAX_IMAGE_PIXELS", "40000000"))
MAX_REQUEST_PIXELS = int(os.environ.get("MAX_REQUEST_PIXELS", "100000000"))
MAX_JSON_DEPTH = 8  # our request bodies need 3 levels: {"instances": [{"b64": ...}]}
# Batch Transform (spec.TRANSFORM sets it): a request the handlers refuse is answered 200 with
# {"error": {"status": ..., "message": ...}}, so one bad image in a prefix is a record saying
# why, not a failed job. Endpoints keep the HTTP status.
ERRORS_IN_BODY = os.environ.get("ERRORS_IN_BODY", "").lower() == "true"

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
        # the shorter side the transform resizes to: large JPEGs are decoded at a reduced
        # scale that still covers it, as preprocess.py decodes large training photos
        self.draft = eval_size(config)[1]
        # the size preprocess.py stored the evaluated images at (None: the model was not
        # trained on preprocessed images): an upload is stored the same way first
        self.stored = config.get("preprocess_size") or None

    def prepare(self, blob: bytes):
        """One image's bytes -> the model's input (uint8, 3 x size x size): as preprocess.py
        stored it (shorter side ``preprocess_size``, Lanczos, JPEG q95), then the evaluation
        transform: the two resizes evaluation applied. The full-size decode lives only inside
        this call."""
        if self.stored:
            blob = as_stored(blob, self.stored, max_pixels=MAX_IMAGE_PIXELS)
        return self.transform(decode_tensor(blob, MAX_IMAGE_PIXELS, draft=self.draft))


# the model input_fn prepares images for (set by model_fn, which the toolkit calls first)
_loaded: LoadedModel | None = None


def model_fn(model_dir: str) -> LoadedModel:
    global _loaded
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # horizontal-flip TTA as evaluate.py's default does; TTA_HFLIP=true/false (an endpoint
    # environment variable) overrides it
    model, config = load_model(model_dir, device, tta_hflip={"true": True, "false": False}.get(
        os.environ.get("TTA_HFLIP", "").strip().lower()))
    model.to(memory_format=torch.channels_last)
    _loaded = LoadedModel(model, config, device)
    return _loaded


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
    if any(c in item for c in "\n\r \t"):  # line-wrapped base64 (RFC 2045, `base64` tool)
        item = "".join(item.split())
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where}: not valid base64") from None


def _depth(doc) -> int:
    """How deeply lists and objects nest in a parsed JSON document (stops past the limit)."""
    deepest, stack = 0, [(doc, 1)]
    while stack and deepest <= MAX_JSON_DEPTH:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _too_deep() -> RequestError:
    return RequestError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels; send "
                             f'{{"image": "<base64>"}} or {{"images": ["<base64>", ...]}}')


def _json_images(body) -> tuple[list[bytes], int | None]:
    try:
        doc = json.loads(body)
    except RecursionError:  # nested past the interpreter's recursion limit
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}") from None
    if _depth(doc) > MAX_JSON_DEPTH:
        raise _too_deep()
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


def _check_pixels(blobs: list[bytes]) -> None:
    """Every image's and the request's pixel count, from the headers alone (413 if over)."""
    total = 0
    for i, blob in enumerate(blobs):
        where = "image" if len(blobs) == 1 else f"image {i}"
        try:
            width, height = image_size(blob)
        except ImageTooLarge as exc:
            raise RequestError(413, f"{where}: {exc}; the limit is {MAX_IMAGE_PIXELS:,} pixels "
                                    f"per image") from None
        except ImageDecodeError as exc:
            raise RequestError(400, f"{where}: {exc}") from None
        if width * height > MAX_IMAGE_PIXELS:
            raise RequestError(413, f"{where} is {width}x{height} = {width * height:,} pixels; "
                                    f"the limit is {MAX_IMAGE_PIXELS:,} pixels per image: send "
                                    f"a smaller image")
        total += width * height
    if total > MAX_REQUEST_PIXELS:
        raise RequestError(413, f"the request's {len(blobs)} images have {total:,} pixels in all; "
                                f"the limit is {MAX_REQUEST_PIXELS:,} pixels per request: send "
                                f"fewer or smaller images per request")


def input_fn(request_body, request_content_type: str):
    """Decode the request into the model's inputs (uint8 image tensors) and an optional top_k.

    Limits are checked on every header first; then each image is decoded and transformed
    before the next is decoded. With ERRORS_IN_BODY, a refused request becomes its error,
    which predict_fn and output_fn pass on.
    """
    try:
        return _decode_request(request_body, request_content_type)
    except RequestError as exc:
        if not ERRORS_IN_BODY:
            raise
        return {"error": {"status": exc.status_code, "message": exc.message}}


def _decode_request(request_body, request_content_type: str) -> dict:
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
    if _loaded is None:
        raise RuntimeError("model_fn must load the model before input_fn prepares images")
    _check_pixels(blobs)
    images = []
    for i, blob in enumerate(blobs):
        where = "image" if len(blobs) == 1 else f"image {i}"
        try:
            images.append(_loaded.prepare(blob))
        except ImageTooLarge as exc:
            raise RequestError(413, f"{where}: {exc}") from None
        except ImageDecodeError as exc:
            raise RequestError(400, f"{where}: {exc}") from None
        blobs[i] = None  # the encoded bytes are not needed any more
    return {"images": images, "top_k": top_k}


@torch.inference_mode()
def predict_fn(data, model: LoadedModel):
    """Top-k classes and probabilities for each image (as input_fn prepared them)."""
    if "error" in data:
        return data
    batch = torch.stack(data["images"])
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
    if isinstance(prediction, dict) and "error" in prediction:
        return json.dumps(prediction)
    return json.dumps({"predictions": prediction})
