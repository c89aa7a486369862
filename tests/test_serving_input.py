"""inference.py's input_fn in-process: decode parity with preprocessing, limits, odd bodies.

A tiny random-weight resnet18 at 64 px: these tests are about the bytes -> model-input path.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import weakref
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import inference
from breedkit.images import ImageDecodeError, ImageTooLarge, decode_tensor, open_rgb, rgb_tensor
from breedkit.model import build_model, save_model_dir

SIZE = 64


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    torch.manual_seed(0)
    model_dir = save_model_dir(tmp_path_factory.mktemp("tiny") / "model",
                               build_model("resnet18", 3), arch="resnet18", image_size=SIZE,
                               class_names=["001.A", "002.B", "003.C"])
    return inference.model_fn(str(model_dir))


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def gradient(w=90, h=70) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1).astype(
        np.uint8)


def odd_images() -> dict[str, bytes]:
    """Images whose decode differs between torchvision and preprocessing's Pillow path."""
    rgb = Image.fromarray(gradient())
    pixels = np.concatenate([gradient(), np.full((70, 90, 1), 255, np.uint8)], -1)
    pixels[:, :45] = 0  # left half transparent black: preprocessing composites it on white
    rgba = Image.fromarray(pixels)
    frames = [Image.new("RGB", (90, 70), c) for c in ((200, 30, 30), (30, 200, 30))]
    sixteen = Image.fromarray(gradient()[..., 0].astype(np.uint16) * 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    return {
        "rgba": encode(rgba, "PNG"),
        "la": encode(rgba.convert("LA"), "PNG"),
        "palette with transparency": encode(rgba.convert("P"), "PNG", transparency=0),
        "16-bit grey": encode(sixteen, "PNG"),
        "animated gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "multi-frame tiff": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "cmyk jpeg": encode(rgb.convert("CMYK"), "JPEG"),
        "exif-rotated jpeg": encode(rgb, "JPEG", exif=exif),
    }


def test_every_image_is_decoded_as_preprocessing_decodes_it(loaded):
    for name, data in odd_images().items():
        (served,) = inference.input_fn(data, "image/png")["images"]
        pixels = rgb_tensor(open_rgb(io.BytesIO(data), draft=loaded.draft))
        assert served.dtype == torch.uint8 and tuple(served.shape) == (3, SIZE, SIZE), name
        assert torch.equal(served, loaded.transform(pixels)), name
        # the training and evaluation loaders' decode agrees too
        assert torch.equal(decode_tensor(data), rgb_tensor(open_rgb(io.BytesIO(data)))), name
    rgba = inference.input_fn(odd_images()["rgba"], "image/png")["images"][0]
    assert rgba[:, :, 0].min() == 255  # transparent -> white, as preprocessing composites
    gif = inference.input_fn(odd_images()["animated gif"], "image/png")["images"][0]
    assert gif[:, 0, 0].tolist() == [200, 30, 30]  # the first frame
    import preprocess
    from breedkit import images

    # one decode for all: serving decodes as evaluation's loader does, whose every image that
    # is not a plain RGB or grey JPEG goes through preprocessing's own open_rgb
    assert inference.decode_tensor is images.decode_tensor
    assert preprocess.open_rgb is images.open_rgb


def test_images_are_decoded_and_transformed_one_at_a_time(loaded, monkeypatch):
    decoded = []
    most = []

    def tracking_open_rgb(*args, **kwargs):
        # full-size decodes still alive when the next one starts
        most.append(sum(ref() is not None for ref in decoded))
        image = open_rgb(*args, **kwargs)
        decoded.append(weakref.ref(image))
        return image

    from breedkit import images as decoding

    monkeypatch.setattr(decoding, "open_rgb", tracking_open_rgb)
    blob = base64.b64encode(encode(Image.fromarray(gradient(400, 300)), "PNG")).decode()
    images = inference.input_fn(json.dumps({"images": [blob] * 4}), "application/json")["images"]
    assert [tuple(i.shape) for i in images] == [(3, SIZE, SIZE)] * 4
    assert most == [0, 0, 0, 0]


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height (its pixel data is missing): a decompression bomb's
    header costs nothing to send and must be refused before anything is decoded."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * (3 * width + 1))))


def test_pixel_limits_per_image_and_per_request_answer_413(loaded, monkeypatch):
    with pytest.raises(inference.RequestError) as err:
        inference.input_fn(png_header(9000, 9000), "image/png")  # 243 MB decoded
    assert err.value.status_code == 413
    assert f"{inference.MAX_IMAGE_PIXELS:,} pixels per image" in str(err.value)

    monkeypatch.setattr(inference, "MAX_REQUEST_PIXELS", 20_000)
    small = base64.b64encode(encode(Image.fromarray(gradient(90, 100)), "PNG")).decode()
    inference.input_fn(json.dumps({"images": [small] * 2}), "application/json")  # 18,000: fine
    with pytest.raises(inference.RequestError) as err:
        inference.input_fn(json.dumps({"images": [small] * 3}), "application/json")
    assert err.value.status_code == 413 and "20,000 pixels per request" in str(err.value)


def test_413_comes_from_the_exception_type_not_the_message(loaded, monkeypatch):
    def failing(error):
        def prepare(blob):
            raise error
        return prepare

    png = encode(Image.fromarray(gradient()), "PNG")
    for error, status in ((ImageDecodeError("palette over the limit of 256 colours"), 400),
                          (ImageDecodeError("a bomb of a file"), 400),
                          (ImageTooLarge("too many pixels"), 413)):
        monkeypatch.setattr(loaded, "prepare", failing(error))
        with pytest.raises(inference.RequestError) as err:
            inference.input_fn(png, "image/png")
        assert err.value.status_code == status, error


def test_line_wrapped_base64_is_accepted(loaded):
    png = encode(Image.fromarray(gradient()), "PNG")
    wrapped = base64.encodebytes(png).decode()  # 76-character lines, as `base64` writes them
    assert "\n" in wrapped.strip()
    for body in ({"image": wrapped}, {"instances": [{"b64": wrapped.replace("\n", "\r\n")}]}):
        (image,) = inference.input_fn(json.dumps(body), "application/json")["images"]
        assert torch.equal(image, inference.input_fn(png, "image/png")["images"][0])


@pytest.mark.parametrize("depth", [9, 100_000])
def test_deeply_nested_json_is_a_400(loaded, depth):
    body = '{"image": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(inference.RequestError) as err:
        inference.input_fn(body, "application/json")
    assert err.value.status_code == 400 and "nested deeper than 8" in str(err.value)
