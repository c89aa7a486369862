"""Image decoding shared by preprocessing, training, evaluation and inference.

One decode, one result: an upright RGB image (EXIF orientation applied, alpha composited on
white, 16-bit rescaled, the first frame of an animation).
- ``open_rgb`` (Pillow) is that decode: ``preprocess.py`` calls it on every raw image, and the
  serving handlers (``inference.py``) call it on every request image, so a served image gets
  exactly the pixels a training image got from the same bytes.
- ``decode_tensor`` for the training and evaluation loaders, which read ``preprocess.py``'s own
  RGB JPEGs: those go through torchvision.io (pixel-identical to Pillow for baseline RGB JPEGs,
  and faster); every other image goes through ``open_rgb``, so the result never differs.
- ``image_size`` reads only the header: callers check their pixel limits before decoding.

Too many pixels raises ``ImageTooLarge`` (a kind of ``ImageDecodeError``): callers that answer
differently for "too large" (HTTP 413) and "not an image" (400) catch the type, never the text.
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


class ImageTooLarge(ImageDecodeError):
    """The image has more pixels than the caller's limit (or is a decompression bomb)."""


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (decompression-bomb protection)")


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
        raise ImageTooLarge(f"decompression bomb: {exc}") from None
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


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; ImageDecodeError if it is not an image."""
    if not data:
        raise ImageDecodeError("empty image")
    with _as_decode_errors():
        return Image.open(io.BytesIO(data)).size


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
    phone photo decodes ~4x faster); smaller images decode at full size. Only RGB and greyscale
    JPEGs take torchvision's path; any other image is ``open_rgb``'s, as preprocessing decodes it
    (torchvision would keep a GIF's frames, 16-bit values and black under transparent pixels).
    """
    import torch
    from torchvision.io import ImageReadMode, decode_image

    if not data:
        raise ImageDecodeError("empty image")
    with _as_decode_errors():
        header = _open_checked(io.BytesIO(data), max_pixels)
    if header.format != "JPEG" or header.mode not in ("RGB", "L"):
        return rgb_tensor(open_rgb(io.BytesIO(data), max_pixels))
    if draft and min(header.size) >= 2 * draft:
        return rgb_tensor(open_rgb(io.BytesIO(data), max_pixels, draft=draft))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision warns on non-writable buffers
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_image(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        pass  # JPEGs torchvision cannot read: Pillow decodes them
    return rgb_tensor(open_rgb(io.BytesIO(data), max_pixels))


def resized_size(width: int, height: int, short: int) -> tuple[int, int]:
    """The size with the shorter side ``short``, the aspect ratio kept."""
    if width <= height:
        return short, max(1, round(height * short / width))
    return max(1, round(width * short / height)), short


def stored_jpeg(img: Image.Image, short: int, quality: int = 95) -> bytes:
    """What preprocess.py stores of an upright RGB image: its shorter side resized to ``short``
    (Lanczos), as a JPEG of ``quality``."""
    img = img.resize(resized_size(img.width, img.height, short), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def as_stored(data: bytes, short: int, quality: int = 95,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """Encoded image bytes as preprocess.py would have stored them: serving repeats the
    preprocessing the model was evaluated on, so it scores what evaluation scored."""
    if not data:
        raise ImageDecodeError("empty image")
    return stored_jpeg(open_rgb(io.BytesIO(data), max_pixels, draft=short), short, quality)


def rgb_tensor(img: Image.Image):
    """An RGB Pillow image as a ``uint8`` tensor of shape (3, H, W)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
