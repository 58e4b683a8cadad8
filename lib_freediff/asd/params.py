"""Any-Size Diffusion's parameters (API field names are a stable contract). Sizes are pixels."""

from __future__ import annotations

from typing import Any, Mapping

import math

from lib_freediff.asd.buckets import FAMILY_NATIVE_AREA, FEATURE, bucket_set_for, format_bucket_list, parse_bucket_list
from lib_freediff.errors import ParamError
from lib_freediff.params import Param, ParamSet

BUCKET_SETS = ("native", "paper", "sdxl")
MODES = ("implicit", "explicit", "none")
TILED_VAE = ("auto", "on", "off")


def _check_buckets(value: str) -> str:
    """"native", "paper", "sdxl", or a custom list "W×H, W×H, …" (validated here so every path reports
    it; a custom list comes back in the canonical form "512x512, 768x576")."""
    text = value.strip()
    if text.lower() in BUCKET_SETS:
        return text.lower()
    return format_bucket_list(parse_bucket_list(text))


def _buckets_infotext(value: str) -> str:
    """A custom list in the infotext reads ``192x128+128x128`` (no comma, colon or space to escape)."""
    return value if value in BUCKET_SETS else value.replace(", ", "+")


def _multiple_of(n: int):
    def check(value: int) -> int:
        if value % n:
            raise ValueError(f"must be a multiple of {n} px, got {value}")
        return value
    return check


TILE_AUTO = 0
MIN_TILE = 128


def _check_tile(value: int) -> int:
    if value == TILE_AUTO:
        return value
    if value < MIN_TILE:
        raise ValueError(f"must be at least {MIN_TILE} px, or 0 (auto), got {value}")
    return _multiple_of(64)(value)


def auto_tile(family: str | None) -> int:
    """The tile size 'auto' takes: the side of the model's native area (SD1.x 512, SD2.x 768, SDXL 1024 px), the
    size it was trained at (SDXL makes poor images from 512-px tiles)."""
    return math.isqrt(FAMILY_NATIVE_AREA.get(family or "sd1", FAMILY_NATIVE_AREA["sd1"]))


def with_tile(values: Mapping[str, Any], family: str | None) -> dict[str, Any]:
    """``values`` with ``tile`` as used: 'auto' (0) resolved for the model family."""
    tile = values["tile"] or auto_tile(family)
    return {**values, "tile": tile}


ASD_PARAMS = ParamSet(
    FEATURE,
    [
        Param("enabled", "bool", False, "Enable Any-Size Diffusion"),
        Param("width", "int", 2048, "Final width", 64, 16384, 1, info="any whole number of pixels"),
        Param("height", "int", 1152, "Final height", 64, 16384, 1, info="any whole number of pixels"),
        Param("buckets", "str", "native", "Aspect-ratio buckets",
              info="native: the paper's 9 ratios at the model's native area; paper: the paper's sizes (up to 2.5× that, "
                   "for ARAD-trained models); sdxl: SDXL's training buckets; or your own list: 512x512, 768x512, …",
              check=_check_buckets, infotext_encode=_buckets_infotext),
        Param("mode", "choice", "implicit", "Tiling mode", choices=list(MODES),
              info="implicit: FSTD, tiles shift randomly every step; explicit: overlapping tiles averaged; none: fixed tiles"),
        Param("tile", "int", TILE_AUTO, "Tile size (px)", 0, 2048, 64, check=_check_tile, aliases={"auto": TILE_AUTO},
              info="0 = auto: the model's native size (512 SD1.x, 768 SD2.x, 1024 SDXL); else a multiple of 64, at least 128"),
        Param("offset_range", "int", 256, "Random offset range (px)", 0, 2048, 8, check=_multiple_of(8),
              info="implicit mode: the grid shifts by up to this much each step"),
        Param("reset_every", "int", 0, "Reset offset every N steps", 0, 1000, 1,
              info="steps 0, N, 2N, … use the unshifted grid (the paper's code: 4); 0 = never"),
        Param("overlap", "int", 256, "Overlap (px, explicit mode)", 0, 2040, 8, check=_multiple_of(8)),
        Param("tile_batch", "int", 0, "Tiles per U-Net call", 0, 64, 1,
              info="0 = auto: 1 on the CPU, 4 on a GPU; more = fewer, larger U-Net calls and more memory"),
        Param("upscaler", "choice", "Latent", "Second-pass upscaler", choices=["Latent"], open_choices=True,
              info="as the WebUI's hires fix: Latent modes or any image upscaler"),
        Param("denoise", "float", 0.5, "Second-pass denoising strength", 0.0, 1.0, 0.01),
        Param("steps", "int", 0, "Second-pass steps", 0, 150, 1, info="0 = as many as the first pass"),
        Param("tiled_vae", "choice", "auto", "VAE in tiles", choices=list(TILED_VAE),
              info="auto: tile the VAE above the size threshold set in Settings"),
    ],
    infotext_key="ASD",
)


def _default_note(name: str, value: Any) -> str:
    return " (its default, taken when it is not given)" if value == ASD_PARAMS.by_name[name].default else ""


def check_values(values: Mapping[str, Any]) -> None:
    """Cross-field rules, with the field named (``tile`` as used: see :func:`with_tile`)."""
    if values["mode"] == "explicit" and values["overlap"] >= values["tile"]:
        raise ParamError(FEATURE, "overlap", f"is {values['overlap']} px{_default_note('overlap', values['overlap'])} "
                                             f"but must be smaller than the tile ({values['tile']} px)")
    if values["mode"] == "implicit" and values["offset_range"] > values["tile"]:
        raise ParamError(FEATURE, "offset_range", f"is {values['offset_range']} px{_default_note('offset_range', values['offset_range'])} "
                                                  f"but must be at most the tile size ({values['tile']} px)")


TXT2IMG_ONLY = {"buckets": "the img2img run is rendered at the target directly",
                "upscaler": "the init image is resized by the request's resize mode",
                "denoise": "the img2img request's own denoising_strength applies",
                "steps": "the img2img request's own steps apply"}


def check_img2img(given: set[str]) -> None:
    """In img2img the fields of txt2img's first pass and upscale are not used: giving one is refused, naming it."""
    for name in TXT2IMG_ONLY:
        if name in given:
            raise ParamError(FEATURE, name, f"is not used in img2img ({TXT2IMG_ONLY[name]}); leave it out")


def buckets_for(values: Mapping[str, Any], family: str | None):
    """The bucket set a generation uses, scaled to the loaded model's native area for named sets."""
    text = values["buckets"]
    family = family or "sd1"
    if text in BUCKET_SETS:
        return bucket_set_for(family, text)
    return bucket_set_for(family, "custom", parse_bucket_list(text))


BUILTIN_PRESETS = {
    # the reference code's schedule: offset reset to (0, 0) every 4th step
    "ASD paper (FSTD)": {"enabled": True, "mode": "implicit", "tile": TILE_AUTO, "offset_range": 256, "reset_every": 4},
    "ASD explicit overlap": {"enabled": True, "mode": "explicit", "tile": TILE_AUTO, "overlap": 256},
}
