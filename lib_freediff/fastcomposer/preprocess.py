"""Reference (subject) image preprocessing for FastComposer's CLIP image encoder.

PIL image → EXIF orientation applied → transparent parts blanked to black (the model was trained on
subjects whose background was removed) → padded to a square with black, centred → resized to 224
(bicubic) → CLIP normalisation → ``(3, 224, 224)`` float32 tensor.

The reference pipeline pads with ``(h - w) // 2`` on both sides and resizes bilinearly (antialiased);
centred padding to an exact square and bicubic resampling differ from it by at most a pixel row and
resampling noise.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import ParamError
from .model import CLIP_MEAN, CLIP_STD, FEATURE

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS, "nearest": Image.NEAREST}


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def blank_background(image: Image.Image) -> Image.Image:
    """RGB image; where the input is transparent, black (alpha-weighted: rgb * alpha)."""
    if not has_alpha(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    out = Image.new("RGB", rgba.size, (0, 0, 0))
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def pad_to_square(image: Image.Image, fill=(0, 0, 0)) -> Image.Image:
    w, h = image.size
    if w == h:
        return image
    s = max(w, h)
    out = Image.new(image.mode, (s, s), fill)
    out.paste(image, ((s - w) // 2, (s - h) // 2))
    return out


def preprocess_image(image: Image.Image, size: int = 224, resample: str = "bicubic") -> torch.Tensor:
    """Reference image → ``(3, size, size)`` CLIP-normalised float32 tensor."""
    if not isinstance(image, Image.Image):
        raise ParamError(FEATURE, "images", f"expected a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ParamError(FEATURE, "images", "the image is empty")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block is no reason to refuse the picture
        pass
    rgb = pad_to_square(blank_background(image))
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), _RESAMPLE[resample])
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?),(?P<data>.*)$", re.S)


def decode_image_b64(s: str, index: Optional[int] = None, param: str = "images") -> Image.Image:
    """Raw base64 or a ``data:image/...;base64,`` URL of a PNG or JPEG (WebP also accepted) → PIL image.
    Anything else → ``ParamError`` naming ``images`` (and the image's 1-based number when given)."""
    which = f"image {index + 1}" if index is not None else "image"
    if not isinstance(s, str):
        raise ParamError(FEATURE, param, f"{which}: expected a base64 string, got {type(s).__name__}")
    s = s.strip()
    m = _DATA_URL.match(s)
    if m:
        if ";base64" not in (m.group("params") or ""):
            raise ParamError(FEATURE, param, f"{which}: a data URL must be base64-encoded (';base64,')")
        s = m.group("data")
    s = re.sub(r"\s+", "", s)
    if not s:
        raise ParamError(FEATURE, param, f"{which}: empty string")
    s += "=" * (-len(s) % 4)
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        try:
            raw = base64.urlsafe_b64decode(s)
        except (binascii.Error, ValueError):
            raise ParamError(FEATURE, param, f"{which}: not valid base64") from None
    try:
        im = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        raise ParamError(FEATURE, param, f"{which}: the image is too large") from None
    except Exception:
        raise ParamError(FEATURE, param, f"{which}: not a PNG or JPEG image") from None
    fmt = im.format
    if fmt not in ("PNG", "JPEG", "WEBP"):
        raise ParamError(FEATURE, param, f"{which}: unsupported format {fmt} (use PNG or JPEG)")
    try:
        im.load()
    except Image.DecompressionBombError:
        raise ParamError(FEATURE, param, f"{which}: the image is too large") from None
    except Exception:
        raise ParamError(FEATURE, param, f"{which}: the {fmt} data is truncated or corrupt") from None
    return im


def to_pil(image: Union[Image.Image, str, np.ndarray], index: Optional[int] = None) -> Image.Image:
    """A PIL image from what the UI or API hands over: PIL, base64 / data URL, or an HxW[xC] uint8 array."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, str):
        return decode_image_b64(image, index)
    if isinstance(image, np.ndarray):
        a = image
        if a.dtype != np.uint8:
            a = np.clip(a * (255.0 if a.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4)):
            return Image.fromarray(a.squeeze(-1) if a.ndim == 3 and a.shape[2] == 1 else a)
    which = f"image {index + 1}" if index is not None else "image"
    raise ParamError(FEATURE, "images", f"{which}: unsupported value of type {type(image).__name__}")
