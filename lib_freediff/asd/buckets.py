"""ARAD aspect-ratio buckets and the any-size plan of Any-Size Diffusion (ASD), stage I → stage II.

Conventions used everywhere in this module:

* A bucket *set* is a tuple of :class:`Bucket` ``(h, w)`` pairs (height first, as the paper and the
  SDXL report list them; ratio ``r = h / w``).
* Anything the UI shows or the caller sizes an image with is a :class:`Size` ``(w, h)`` (width first,
  as the WebUI's width/height controls).
* The text form (:func:`parse_bucket_list`, :func:`format_bucket_list`) is ``WIDTHxHEIGHT``, because
  WebUI users type width×height everywhere: ``"512x512, 768x576"`` means the buckets 512 wide × 512
  high and 768 wide × 576 high.

Nothing here imports torch; every function is pure and cheap enough for live UI updates.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence, Tuple, Union

from lib_freediff.asd.tiles import grid_plan
from lib_freediff.errors import ParamError

FEATURE = "Any-Size Diffusion"

MAX_CUSTOM_BUCKETS = 64

FAMILY_NATIVE_AREA = {"sd1": 512 * 512, "sd2": 768 * 768, "sdxl": 1024 * 1024}
"""Native training pixel area of each model family."""


class Bucket(NamedTuple):
    """One aspect-ratio bucket, height first: ``Bucket(h, w)``, ratio ``h / w``."""

    h: int
    w: int

    @property
    def ratio(self) -> float:
        return self.h / self.w


class Size(NamedTuple):
    """An image size, width first: ``Size(w, h)``."""

    w: int
    h: int


class Box(NamedTuple):
    """A crop box in pixels, PIL order: ``(left, top, right, bottom)``; right/bottom exclusive."""

    left: int
    top: int
    right: int
    bottom: int


PAPER_BUCKETS: Tuple[Bucket, ...] = tuple(
    Bucket(h, w)
    for h, w in (
        (512, 512), (576, 768), (768, 576), (576, 1024), (1024, 576),
        (640, 1024), (1024, 640), (512, 1024), (1024, 512),
    )
)
"""The 9 buckets of the ASD paper (Table 5), H×W, nominally for a 512² model."""

SDXL_BUCKETS: Tuple[Bucket, ...] = tuple(
    Bucket(h, w)
    for h, w in (
        (512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664),
        (640, 1600), (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280),
        (832, 1216), (832, 1152), (896, 1152), (896, 1088), (960, 1088), (960, 1024),
        (1024, 1024),
        (1024, 960), (1088, 960), (1088, 896), (1152, 896), (1152, 832), (1216, 832), (1280, 768),
        (1344, 768), (1344, 704), (1408, 704), (1472, 704), (1536, 640), (1600, 640), (1664, 576),
        (1728, 576), (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 512),
    )
)
"""The SDXL multi-aspect training buckets (SDXL report, appendix), H×W, ~1024² each, sides in steps of
64 from 512×2048 to 2048×512. 1344×704 (ratio 1.91) is included: some copies of the table omit it,
which would leave 704×1344 without its mirror."""

NATIVE_SIDE_MULTIPLES = (64, 32, 16, 8)
NATIVE_AREA_TOLERANCE = 0.10
"""The ``native`` set's sides are the largest of these multiples that keeps every bucket's area within
this fraction of the model's native area (SD1.x and SD2.x: 32, SDXL: 64)."""

BucketsLike = Union[str, Iterable[Sequence[int]]]


def _int_param(value, param: str, *, minimum: int = 1) -> int:
    """An integer parameter (integral floats such as 1024.0 from UI sliders are accepted)."""
    if isinstance(value, bool):
        raise ParamError(FEATURE, param, f"expected an integer, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ParamError(FEATURE, param, f"expected a whole number, got {value!r}")
        value = int(value)
    try:
        value = int(value.__index__())
    except (AttributeError, TypeError):
        raise ParamError(FEATURE, param, f"expected an integer, got {value!r}") from None
    if value < minimum:
        raise ParamError(FEATURE, param, f"must be at least {minimum}, got {value}")
    return value


def _validate_bucket_list(pairs: Iterable[Sequence[int]]) -> Tuple[Bucket, ...]:
    """Checks (h, w) pairs: positive multiples of 8, 1..64 entries; drops exact duplicates."""
    out = []
    for i, pair in enumerate(pairs):
        try:
            h, w = pair
        except (TypeError, ValueError):
            raise ParamError(FEATURE, "buckets", f"entry {i} is not a (height, width) pair: {pair!r}") from None
        for v in (h, w):
            if isinstance(v, bool) or not isinstance(v, int) and not hasattr(v, "__index__"):
                raise ParamError(FEATURE, "buckets", f"entry {i} ({pair!r}) must hold integers")
        h, w = int(h), int(w)
        if h <= 0 or w <= 0 or h % 8 or w % 8:
            raise ParamError(
                FEATURE, "buckets",
                f"entry {i} ({w}x{h} as WxH) must have positive sides that are multiples of 8",
            )
        b = Bucket(h, w)
        if b not in out:
            out.append(b)
        if len(out) > MAX_CUSTOM_BUCKETS:
            raise ParamError(FEATURE, "buckets", f"at most {MAX_CUSTOM_BUCKETS} buckets are allowed")
    if not out:
        raise ParamError(FEATURE, "buckets", "the bucket list is empty")
    return tuple(out)


_ITEM_RE = re.compile(r"^\s*(\d+)\s*[xX×*]\s*(\d+)\s*$")


def parse_bucket_list(text: str) -> Tuple[Bucket, ...]:
    """Parses the user-facing text form into a bucket set.

    Items are ``WIDTHxHEIGHT`` (``x``, ``X``, ``×`` or ``*``), separated by commas, semicolons, ``+`` (the
    infotext's form) or line breaks: ``"512x512, 768x576"`` → ``(Bucket(h=512, w=512), Bucket(h=576, w=768))``.
    Exact duplicates are dropped; anything else malformed raises :class:`ParamError` on ``buckets``.
    """
    if not isinstance(text, str):
        raise ParamError(FEATURE, "buckets", f"expected text like '512x512, 768x576', got {type(text).__name__}")
    pairs = []
    for item in re.split(r"[,;+\n]+", text):
        if not item.strip():
            continue
        m = _ITEM_RE.match(item)
        if not m:
            raise ParamError(FEATURE, "buckets", f"'{item.strip()}' is not WIDTHxHEIGHT (e.g. 768x576)")
        w, h = int(m.group(1)), int(m.group(2))
        pairs.append((h, w))
    return _validate_bucket_list(pairs)


def format_bucket_list(buckets: Iterable[Sequence[int]]) -> str:
    """The text form of a bucket set of (h, w) pairs: ``"512x512, 768x576"`` (WIDTHxHEIGHT)."""
    return ", ".join(f"{int(w)}x{int(h)}" for h, w in buckets)


def _round_to(v: float, multiple: int) -> int:
    return max(multiple, int(math.floor(v / multiple + 0.5)) * multiple)


def scale_buckets(
    buckets: Iterable[Sequence[int]], native_area: int, multiple: int = 64, *, source_area: int | None = None
) -> Tuple[Bucket, ...]:
    """Rescales a bucket set to a model's native pixel area, keeping each bucket's ratio.

    Every bucket is multiplied by the same factor ``sqrt(native_area / source_area)``, so the set keeps
    its shape (the paper's set is not equal-area: 1024×640 is bigger than 512×512). ``source_area``
    defaults to the area of the set's most square bucket (the smaller one on a tie): 512² for
    :data:`PAPER_BUCKETS`, 1024² for :data:`SDXL_BUCKETS`. Sides are rounded to the nearest multiple of
    ``multiple`` (at least ``multiple``); buckets that collapse onto the same size are kept once.
    """
    bl = _validate_bucket_list(buckets)
    native_area = _int_param(native_area, "native_area", minimum=64 * 64)
    multiple = _int_param(multiple, "multiple", minimum=8)
    if multiple % 8:
        raise ParamError(FEATURE, "multiple", f"must be a multiple of 8, got {multiple}")
    if source_area is None:
        sq = min(bl, key=lambda b: (abs(math.log(b.h / b.w)), b.h * b.w))
        source_area = sq.h * sq.w
    source_area = _int_param(source_area, "source_area")
    f = math.sqrt(native_area / source_area)
    out = []
    for b in bl:
        nb = Bucket(_round_to(b.h * f, multiple), _round_to(b.w * f, multiple))
        if nb not in out:
            out.append(nb)
    return tuple(out)


def _equal_area_bucket(ratio: float, area: int, multiple: int) -> Bucket:
    """The bucket of sides that are multiples of ``multiple`` nearest ``ratio`` (h/w) at ``area``: the
    smallest summed log error of ratio and area among the sizes around the exact one (ratio ≤ 1)."""
    best = None
    exact_w = math.sqrt(area / ratio)
    for w in range(max(multiple, int(exact_w / multiple) * multiple - 2 * multiple), int(exact_w) + 3 * multiple, multiple):
        for h in {max(multiple, int(w * ratio / multiple) * multiple), int(w * ratio / multiple + 1) * multiple}:
            cost = abs(math.log(h / w / ratio)) + abs(math.log(h * w / area))
            if best is None or cost < best[0]:
                best = (cost, Bucket(h, w))
    return best[1]


def native_buckets(area: int, ratios: Iterable[float] | None = None) -> Tuple[Bucket, ...]:
    """The paper's ratios (or ``ratios``, h/w) as an equal-area set at ``area``, the model's native area.

    Each bucket is the size nearest its ratio and the area (see :func:`_equal_area_bucket`); a ratio
    above 1 is the mirror of its inverse, so the set is symmetric. The sides are multiples of the largest
    of :data:`NATIVE_SIDE_MULTIPLES` at which every bucket's area is within :data:`NATIVE_AREA_TOLERANCE`
    of ``area`` and no two ratios share a bucket.
    """
    ratios = [b.ratio for b in PAPER_BUCKETS] if ratios is None else list(ratios)
    for multiple in NATIVE_SIDE_MULTIPLES:
        out = []
        for r in ratios:
            b = _equal_area_bucket(min(r, 1 / r), area, multiple)
            out.append(b if r <= 1 else Bucket(b.w, b.h))
        if len(set(out)) == len(out) and all(abs(b.h * b.w / area - 1) <= NATIVE_AREA_TOLERANCE for b in out):
            return tuple(out)
    return tuple(out)


def bucket_set_for(family: str, name: str = "native", custom: BucketsLike | None = None) -> Tuple[Bucket, ...]:
    """The bucket set for a model family.

    ``family``: ``"sd1"`` (512²), ``"sd2"`` (768²) or ``"sdxl"`` (1024²).
    ``name``: ``"native"`` (the paper's nine ratios at equal area, the family's native area:
    :func:`native_buckets`), ``"paper"`` (:data:`PAPER_BUCKETS` scaled to the family by its square
    bucket: up to 2.5× the native area, the sizes ARAD fine-tuned its model on), ``"sdxl"``
    (:data:`SDXL_BUCKETS` scaled to the family) or ``"custom"``: ``custom`` used as given (not rescaled),
    either a sequence of (h, w) pairs or the WIDTHxHEIGHT text form; validated (positive multiples of 8,
    at most 64).
    """
    if family not in FAMILY_NATIVE_AREA:
        raise ParamError(FEATURE, "family", f"unknown model family {family!r}; expected one of sd1, sd2, sdxl")
    area = FAMILY_NATIVE_AREA[family]
    if name == "native":
        return native_buckets(area)
    if name == "paper":
        return scale_buckets(PAPER_BUCKETS, area)
    if name == "sdxl":
        return scale_buckets(SDXL_BUCKETS, area)
    if name == "custom":
        if custom is None:
            raise ParamError(FEATURE, "buckets", "bucket set 'custom' needs a list of buckets")
        if isinstance(custom, str):
            return parse_bucket_list(custom)
        return _validate_bucket_list(custom)
    raise ParamError(FEATURE, "bucket_set", f"unknown bucket set {name!r}; expected native, paper, sdxl or custom")


def choose_bucket(target_w: int, target_h: int, buckets: Iterable[Sequence[int]]) -> Size:
    """Eq. 1 of the paper: the bucket whose ratio ``h/w`` is nearest the target's ``H/W``; returns it as
    ``Size(w, h)``.

    Ties (ratio distances equal within 1e-9) go to the bucket whose area is closest to the target's
    area (in log scale, so 2× too big and 2× too small count the same), then to the smaller width.
    """
    tw = _int_param(target_w, "width")
    th = _int_param(target_h, "height")
    bl = _validate_bucket_list(buckets)
    r = th / tw
    log_area = math.log(tw * th)
    best_d = min(abs(b.h / b.w - r) for b in bl)
    tied = [b for b in bl if abs(b.h / b.w - r) - best_d <= 1e-9]
    b = min(tied, key=lambda b: (abs(math.log(b.h * b.w) - log_area), b.w))
    return Size(b.w, b.h)


@dataclass(frozen=True)
class AnyPlan:
    """How a target size is produced by the two ASD stages (all sizes in pixels, ``Size(w, h)``).

    * ``bucket``: the bucket of the target's ratio (Eq. 1); ``first_pass``: the size stage I generates at,
      the bucket itself, or the bucket shrunk (one factor) until it just covers ``render`` when the
      bucket is larger than that: the second pass never downscales (``upscale`` ≥ 1).
    * ``upscale``: the single factor applied to both axes of the first-pass image; ``upscaled`` is the
      resulting size (rounded up), which covers ``render``.
    * ``upscale_crop``: the centre crop of the upscaled image to ``render`` (removes the ratio mismatch
      between bucket and target; no stretching).
    * ``render``: the stage II size, the smallest multiples of 8 covering the target; ``latent`` is it / 8.
    * ``final_crop``: the centre crop of the stage II result to exactly ``final`` (at most 7 px per axis).
    * ``tiles``: (cols, rows) of the non-overlapping tile grid with tiles of at most ``tile_px`` (the layout
      rules of :mod:`lib_freediff.asd.tiles`), ``tile_size`` their size in px; FSTD uses at most this many
      tiles per step.
    """

    first_pass: Size
    upscale: float
    upscaled: Size
    upscale_crop: Box
    render: Size
    latent: Size
    final_crop: Box
    final: Size
    tile_px: int
    tiles: Tuple[int, int]
    tile_size: Size
    bucket: Size


def _centre_crop(src_w: int, src_h: int, w: int, h: int) -> Box:
    left, top = (src_w - w) // 2, (src_h - h) // 2
    return Box(left, top, left + w, top + h)


def _ceil8(v: int) -> int:
    return -(-v // 8) * 8


def plan_any_size(
    target_w: int, target_h: int, buckets: Iterable[Sequence[int]], max_pixels: int, tile_px: int = 512
) -> AnyPlan:
    """Plans an any-size generation (pure; cheap enough to call on every UI change).

    Validates first: width and height are integers ≥ 64 and ``width*height ≤ max_pixels``
    (:class:`ParamError` naming ``width`` or ``height`` otherwise; ``tile_px`` a multiple of 8 ≥ 64).
    Fit rule: stage II renders at the smallest multiple-of-8 size covering the target; the first pass is
    the chosen bucket, or, where covering the render size would scale the bucket down, the bucket shrunk
    by one factor until it just covers it (sides rounded up to multiples of 8): the second pass never
    downscales; the first-pass
    image is scaled by one factor (≥ 1) in both axes until it covers that size and centre-cropped to it;
    the stage II result is centre-cropped to exactly the target, cutting at most 7 px per axis (the
    odd pixel goes to the right/bottom).
    """
    tw = _int_param(target_w, "width", minimum=64)
    th = _int_param(target_h, "height", minimum=64)
    max_pixels = _int_param(max_pixels, "max_pixels", minimum=64 * 64)
    if tw * th > max_pixels:
        raise ParamError(
            FEATURE, "width" if tw >= th else "height",
            f"{tw}x{th} is {tw * th} pixels, more than the limit of {max_pixels} pixels",
        )
    tile_px = _int_param(tile_px, "tile_px", minimum=64)
    if tile_px % 8:
        raise ParamError(FEATURE, "tile_px", f"must be a multiple of 8, got {tile_px}")
    bucket = choose_bucket(tw, th, buckets)
    render = Size(_ceil8(tw), _ceil8(th))
    s = max(render.w / bucket.w, render.h / bucket.h)
    first = bucket
    if s < 1:  # the bucket would be downscaled: shrink it until it just covers the render size
        first = Size(max(render.w, _ceil8(math.ceil(bucket.w * s - 1e-6))), max(render.h, _ceil8(math.ceil(bucket.h * s - 1e-6))))
        s = max(render.w / first.w, render.h / first.h)
    up = Size(max(render.w, math.ceil(first.w * s - 1e-9)), max(render.h, math.ceil(first.h * s - 1e-9)))
    grid = grid_plan(render.w // 8, render.h // 8, tile_px // 8)
    return AnyPlan(
        first_pass=first,
        upscale=s,
        upscaled=up,
        upscale_crop=_centre_crop(up.w, up.h, render.w, render.h),
        render=render,
        latent=Size(render.w // 8, render.h // 8),
        final_crop=_centre_crop(render.w, render.h, tw, th),
        final=Size(tw, th),
        tile_px=tile_px,
        tiles=(grid.cols, grid.rows),
        tile_size=Size(grid.tile_w * 8, grid.tile_h * 8),
        bucket=bucket,
    )
