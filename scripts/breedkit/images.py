"""Image decoding shared by preprocessing, training, evaluation and inference.

Two paths, one result: an RGB image with EXIF orientation applied.
- ``open_rgb`` (Pillow) for preprocessing, where every odd mode must be handled.
- ``decode_tensor`` (torchvision.io, Pillow as fallback) for training and serving, returning a
  ``uint8`` CHW tensor. Training and inference use this same function, so a served image goes
  through the pixels path the model was trained and evaluated on; a large served JPEG is first
  decoded at a reduced scale, as ``preprocess.py`` decodes large training photos.
"""

from __future__ import annotations

import contextlib
import io
import warnings

from PIL import Image, ImageOps

# Pillow's own default limit (about 89 megapixels); larger images are treated as
# decompression bombs and refused.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageDecodeError(ValueError):
    """The bytes are not an image we can read (empty, truncated, unknown format, too large)."""


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (decompression-bomb protection)")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha is composited on white, 16-bit is rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).round().astype("uint8"), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@contextlib.contextmanager
def _as_decode_errors():
    """Pillow's many exceptions (and its bomb warning) as one ImageDecodeError with a reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower():
            raise ImageDecodeError(f"truncated image: {text}") from None
        raise ImageDecodeError(f"cannot decode image: {text}") from None


def _open_checked(source, max_pixels: int) -> Image.Image:
    """Image.open (reads only the header) and the pixel-count limit."""
    img = Image.open(source)
    _check_pixels(img.width, img.height, max_pixels)
    return img


def open_rgb(source, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None
             ) -> Image.Image:
    """Open an image file or file object fully (so truncation is detected) as upright RGB.

    ``draft``: the shorter side the caller will resize to; JPEGs are then decoded at a reduced
    scale that still covers it (much faster for large photos, same quality after resizing).
    Raises ImageDecodeError with a short reason for anything that is not a usable image.
    """
    with _as_decode_errors():
        img = _open_checked(source, max_pixels)
        if draft and img.format == "JPEG":
            img.draft(None, (draft, draft))
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))


def decode_tensor(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None):
    """Decode encoded image bytes to an upright RGB ``uint8`` tensor of shape (3, H, W).

    ``draft``: the shorter side the caller will resize to. A JPEG at least twice that size is
    then decoded at a reduced scale that still covers it, as ``preprocess.py`` does (a 12 MP
    phone photo decodes ~4x faster); smaller images decode at full size.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_image

    if not data:
        raise ImageDecodeError("empty image")
    with _as_decode_errors():
        header = _open_checked(io.BytesIO(data), max_pixels)
    if draft and header.format == "JPEG" and min(header.size) >= 2 * draft:
        return _pil_tensor(open_rgb(io.BytesIO(data), max_pixels, draft=draft))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision warns on non-writable buffers
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_image(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        pass  # formats torchvision lacks (BMP, TIFF, ...) or odd modes: Pillow handles them
    return _pil_tensor(open_rgb(io.BytesIO(data), max_pixels))


def _pil_tensor(img: Image.Image):
    import numpy as np
    import torch

    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
