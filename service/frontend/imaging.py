"""Image decoding, preprocessing to the bundle's tensor layout, and mask / overlay encoding.

Decoding is the untrusted-input boundary: the header is read first and its pixel count checked
against the limit before any pixel is decoded (decompression bombs), only raster formats are
accepted, and every decoder error becomes `InvalidImage` (400) rather than a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from export.bundle import AREA
from service.errors import InvalidImage, PayloadTooLarge

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
RESIZABLE_MODES = {"L", "RGB", "RGBA", "I", "F"}  # bilinear resize works in these directly


def decode_base64(text: str) -> bytes:
    """Strict base64 (a `data:` URL prefix is allowed); errors are 400s."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"image is not valid base64: {exc}") from None


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read an image's header and check its size; pixels are not decoded yet."""
    if not data:
        raise InvalidImage("image is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise PayloadTooLarge(f"image has too many pixels: {exc}") from None
        except UnidentifiedImageError:
            raise InvalidImage(f"not a decodable image (accepted: {', '.join(FORMATS)})") from None
        except Exception as exc:  # PIL raises many types on malformed headers
            raise InvalidImage(f"invalid image header: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the "
            f"limit is {max_pixels} (NEUTRENO_MAX_IMAGE_PIXELS)"
        )
    return img


def load_pixels(img: Image.Image) -> Image.Image:
    """Decode the pixels of an opened image; truncated or corrupt data is a 400."""
    try:
        img.load()
    except Exception as exc:
        raise InvalidImage(f"truncated or corrupt {img.format} image: {exc}") from None
    return img


def to_mode(img: Image.Image, channels: int, background: str = "black") -> Image.Image:
    """Grey (`channels` 1) or RGB, compositing transparency onto the background colour."""
    if img.mode in HIGH_DEPTH_MODES:
        arr = np.array(img, dtype=np.float32)  # scaled in place: one float copy at most
        arr *= 255.0 / (65535.0 if arr.max(initial=0.0) > 255.0 else 255.0)
        img = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        fill = (255, 255, 255, 255) if background == "white" else (0, 0, 0, 255)
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, fill), rgba)
    return img.convert("L" if channels == 1 else "RGB")


def resize(img: Image.Image, size: tuple[int, int], method: str) -> Image.Image:
    """Resize to (width, height) by the bundle's `resize` method.

    "area" averages each output pixel's footprint when shrinking (PIL BOX), so a 112x112 photo
    of a 28x28 item comes back sharp instead of aliased, and enlarges bilinearly; the other
    names are PIL filters used both ways (unknown names fall back to bilinear).
    """
    if img.size == size:
        return img
    if method == AREA:
        shrinking = img.width >= size[0] and img.height >= size[1]
        return img.resize(size, Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    return img.resize(size, RESAMPLE.get(method, Image.Resampling.BILINEAR))


def preprocess(
    img: Image.Image, pre: dict[str, Any], dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """The bundle's pixel preprocessing: mode, resize, [0, 1], (x - mean) / std; (1, C, H, W).

    Computed in float32 and cast once to `dtype`, the graph input's type (float16 bundles).
    """
    channels = int(pre.get("channels", 3))
    height, width = (int(v) for v in pre["image_size"])
    img = to_mode(img, channels, str(pre.get("background", "black")))
    img = resize(img, (width, height), str(pre.get("resize", "bilinear")))
    arr = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    mean = np.asarray(pre.get("mean", [0.0] * channels), np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.get("std", [1.0] * channels), np.float32).reshape(-1, 1, 1)
    return ((arr - mean) / std)[None].astype(dtype, copy=False)


def bounded_rgb(img: Image.Image, max_pixels: int) -> Image.Image:
    """The image in RGB, scaled down (aspect kept) to at most `max_pixels` pixels.

    Common modes are scaled before the RGB conversion, so a large input is never copied at
    full size.
    """
    scale = (max_pixels / (img.width * img.height)) ** 0.5
    if scale >= 1.0:
        return to_mode(img, 3)
    size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
    if img.mode in RESIZABLE_MODES:
        return to_mode(img.resize(size, Image.Resampling.BILINEAR), 3)
    return to_mode(img, 3).resize(size, Image.Resampling.BILINEAR)


def png_base64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def mask_at_size(class_map: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """(h, w) class indices as an 8-bit image of the input's (width, height) (nearest)."""
    mask = Image.fromarray(class_map.astype(np.uint8), "L")
    return mask if mask.size == size else mask.resize(size, Image.Resampling.NEAREST)


def palette(num_classes: int) -> np.ndarray:
    """Fixed, well-spread RGB colours per class (golden-ratio hues); class 0 is black."""
    hues = (np.arange(num_classes) * 0.618033988749895) % 1.0
    colours = np.stack([_hsv_to_rgb(h, 0.75, 0.95) for h in hues]).astype(np.uint8)
    colours[0] = 0
    return colours


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return 255.0 * (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def overlay(img: Image.Image, mask: np.ndarray, num_classes: int) -> Image.Image:
    """The image in RGB with each non-background pixel averaged with its class colour.

    mask (img.height, img.width) class indices. Integer math (uint16) keeps it to a few bytes
    per pixel; callers pass an image already bounded in size (`bounded_rgb`).
    """
    base = np.asarray(to_mode(img, 3), dtype=np.uint16)
    colours = palette(num_classes).astype(np.uint16)[mask]
    blended = np.where((mask > 0)[..., None], (base + colours) >> 1, base)
    return Image.fromarray(blended.astype(np.uint8), "RGB")
