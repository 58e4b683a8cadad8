"""FastComposer's parameters (API field names are a stable contract), presets and infotext value."""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from PIL import Image

from lib_freediff.fastcomposer.model import FEATURE
from lib_freediff.fastcomposer.preprocess import blank_background, to_pil
from lib_freediff.params import Param, ParamSet

MAX_IMAGES = 4
INFOTEXT_KEY = "FastComposer"


def _check_images(value: Any) -> list:
    """1–4 subject images (UI: PIL images, empty slots None; API: base64 PNG/JPEG strings or data URLs)."""
    if value is None:
        return []
    if isinstance(value, (str, Image.Image)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of up to {MAX_IMAGES} base64 PNG/JPEG images, got {type(value).__name__}")
    present = [(i, v) for i, v in enumerate(value) if v is not None]
    if len(present) > MAX_IMAGES:
        raise ValueError(f"at most {MAX_IMAGES} subject images, got {len(present)}")
    return [to_pil(v, i) for i, v in present]


FASTCOMPOSER_PARAMS = ParamSet(
    FEATURE,
    [
        Param("enabled", "bool", False, "Enable FastComposer"),
        Param("model", "choice", "", "FastComposer model", choices=(), open_choices=True,
              info="a file in models/fastcomposer (.bin or .safetensors); empty: the first one"),
        Param("images", "json", (), "Subject images", infotext=False, check=_check_images),
        Param("alpha", "float", 0.7, "Alpha (α)", 0.0, 1.0, 0.01,
              info="share of the sampling steps, at the end, that see the subjects: the first ⌊(1−α)·steps⌋ steps are text-only"),
        Param("hires", "bool", True, "Subject conditioning in hires fix pass"),
    ],
    infotext_key=INFOTEXT_KEY,
)

# presets hold the settings, never the subject images nor the model file
PRESET_PARAMS = ParamSet(FEATURE, [FASTCOMPOSER_PARAMS.by_name[n] for n in ("enabled", "alpha", "hires")],
                         infotext_key=INFOTEXT_KEY)
BUILTIN_PRESETS = {
    "Balanced (alpha 0.7)": {"enabled": True, "alpha": 0.7},
    "Identity (alpha 0.8)": {"enabled": True, "alpha": 0.8},
    "Editable (alpha 0.6)": {"enabled": True, "alpha": 0.6},
}


def collect_images(*slots) -> list:
    """The panel's four image slots → the ``images`` argument (empty slots skipped)."""
    return [im for im in slots if im is not None]


def image_hash(image: Image.Image) -> str:
    """sha256 of the image's pixels as the encoder sees them (RGB, transparent parts black), 10 digits."""
    rgb = blank_background(image)
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()[:10]


def infotext_value(values: Mapping[str, Any], digest: str, image_hashes: list[str]) -> str:
    """``model=… alpha=…`` (+ ``hires=false``) ``subjects=n model_hash=… image_hashes=h1+h2`` (never the images)."""
    base = FASTCOMPOSER_PARAMS.format_infotext(values, always=("model", "alpha"))
    return f"{base} subjects={len(image_hashes)} model_hash={digest} image_hashes={'+'.join(image_hashes)}"
