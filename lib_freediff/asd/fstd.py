"""Tiled denoising for stage II of Any-Size Diffusion: FSTD "implicit overlap" (random per-step grid
offset, uncovered cells carried from the previous step), plus explicit overlap (MultiDiffusion-style
averaging) and a fixed non-overlapping grid, for comparison.

All sizes and coordinates in this module are latent pixels (1 latent px = 8 image px).

Grid rules (shared by every mode):

* Tiles are ``tile × tile`` (an axis shorter than ``tile`` gets one tile spanning it). Along an axis of
  length ``L`` the tile origins are ``d, d + s, d + 2s, …`` (``s`` = stride, ``d`` = offset) until a tile
  reaches the end; an origin past ``L − tile`` is clamped to ``L − tile`` (no wrap-around), so the last
  tile may overlap its neighbour.
* ``implicit``: ``s = tile``, ``d`` = the step's random offset; cells in ``[0, d)`` are not covered.
  A shifted grid is laid from a corner that rotates with the step (top-left, bottom-right, top-right,
  bottom-left; an axis laid from its far end mirrors the rule), so the uncovered strip moves round
  the edges: every cell is denoised in at least about a quarter of the steps without reset steps.
* ``explicit``: ``s = tile − overlap``, ``d = 0``.  ``none``: ``s = tile``, ``d = 0``.

Blending: explicit mode averages overlapping tiles with uniform weights. Implicit and none modes
blend the (clamped or extra) overlaps with a separable Gaussian window per tile (σ = tile/4),
normalised where tiles meet; a cell covered by one tile gets exactly that tile's value.

Carry-over (implicit mode): the output of call ``k`` of step ``i`` (its position among the model calls
made since ``set_step(i)``) is kept, as x0, keyed by ``(k, x.shape)``; call ``k`` of step ``i+1`` with
the same shape takes its uncovered cells from it. If no such prediction exists (first step, shape
change, a step skipped), the grid gets extra tiles at origin 0 so every cell is denoised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from lib_freediff.errors import ParamError

FEATURE = "Any-Size Diffusion"

MODES = ("implicit", "explicit", "none")
PREDICTIONS = ("x0", "eps", "v")


class TileBox(NamedTuple):
    """A tile in latent px, PIL order ``(x0, y0, x1, y1)``; ``x1``/``y1`` exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int


def axis_starts(length: int, tile: int, offset: int = 0, stride: Optional[int] = None,
                cover_start: bool = False, from_end: bool = False) -> List[int]:
    """Tile origins along one axis (see the module docstring). ``cover_start`` adds an origin at 0
    when ``offset > 0`` so the axis is covered from its first cell. ``from_end`` mirrors the grid: it
    is laid from the far end, so the uncovered strip is ``[length − offset, length)``."""
    if length <= tile:
        return [0]
    if from_end:
        return sorted(length - tile - s for s in axis_starts(length, tile, offset, stride, cover_start))
    stride = tile if stride is None else stride
    last = length - tile
    starts: List[int] = [0] if (cover_start and offset > 0) else []
    s = offset
    while True:
        c = min(s, last)
        if not starts or c != starts[-1]:
            starts.append(c)
        if s >= last:
            return starts
        s += stride


def tile_grid(h: int, w: int, tile: int, dx: int = 0, dy: int = 0, *, stride: Optional[int] = None,
              cover_start: bool = False, anchor: Tuple[bool, bool] = (False, False)) -> List[TileBox]:
    """The tile boxes (row-major) for an ``h × w`` latent, grid shifted by ``(dx, dy)`` from the
    top-left corner; ``anchor = (x_from_end, y_from_end)`` lays an axis from its far end instead."""
    th, tw = min(tile, h), min(tile, w)
    ys = axis_starts(h, tile, dy, stride, cover_start, anchor[1])
    xs = axis_starts(w, tile, dx, stride, cover_start, anchor[0])
    return [TileBox(x, y, x + tw, y + th) for y in ys for x in xs]


_ANCHORS = ((False, False), (True, True), (True, False), (False, True))


def _mix_seed(seed: int, step: int) -> int:
    # splitmix64 finaliser: neighbouring (seed, step) pairs give unrelated generator seeds.
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


def _gauss_1d(n: int) -> torch.Tensor:
    c = (n - 1) / 2
    sigma = max(n / 4, 1e-3)
    return torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float64) - c) / sigma) ** 2)


@dataclass
class _Grid:
    boxes: Tuple[TileBox, ...]
    weights: List[Optional[torch.Tensor]]  # normalised (1,1,th,tw); None = sole owner of its cells
    covered: Optional[torch.Tensor]  # (1,1,H,W) bool, None when every cell is covered
    uncovered: int


@dataclass
class CallInfo:
    """What one model call did (recorded in :attr:`TiledDenoiser.history` when that is a list)."""

    step: int
    call: int
    shape: Tuple[int, ...]
    offset: Tuple[int, int]
    boxes: Tuple[TileBox, ...]
    extra_tiles: bool  # origin-0 tiles added because no previous prediction was usable
    carried_cells: int  # latent cells (per sample) taken from the previous step
    inner_calls: int


class TiledDenoiser(torch.nn.Module):
    """Wraps a k-diffusion style denoiser ``inner(x, sigma, cond=...)`` and runs it tile by tile.

    Same call signature and output shape as ``inner``. ``x`` is the latent ``(B, C, H, W)``; in
    ``prediction="x0"`` mode (k-diffusion wrappers such as ``CompVisDenoiser``) ``sigma`` is ``(B,)``
    noise levels and ``inner`` returns the denoised x0; with ``"eps"`` (the WebUI's timestep samplers:
    ``CompVisTimestepsDenoiser`` and ``CompVisTimestepsVDenoiser`` both return eps) or ``"v"`` (a raw
    v-model ``apply_model``), ``sigma`` is the DDPM timestep ``(B,)``, ``x`` the variance-preserving
    ``x_t``, and ``alphas_cumprod`` is required to carry values across steps (they are carried as x0
    and converted back with the current ``x`` and timestep).

    Per-tile arguments: ``x``; every tensor in ``cond``/kwargs (nested dicts, lists, tuples) of shape
    ``(B, *, H, W)`` is cut with the tile, of shape ``(B, *, 8H, 8W)`` cut at 8× coordinates (pixel-space
    hints); any other tensor whose first dim is ``B`` (cross-attention context, SDXL ``vector``,
    ``sigma``) is repeated per tile; everything else is passed through. Up to ``tile_batch`` tiles go
    through ``inner`` per call, concatenated tile-major along the batch dim.

    Steps: call :meth:`set_step` before the model calls of each sampler step (calling it again with
    the same index is a no-op) and :meth:`reset` before each sampling run. Offsets: step ``i`` uses
    ``(0, 0)`` when ``reset_every > 0`` and ``i % reset_every == 0`` (the reference resets every 4th
    step; the default, 0, never does, as the rotating anchor already refreshes the edges),
    otherwise ``(dx, dy)`` drawn uniformly from ``[0, offset_range)`` by a generator seeded from
    ``(seed, i)`` only, so every call of a step uses the same offset whatever happened before.

    When one tile covers the whole latent, ``inner`` is called directly (bit-identical result).
    Unknown attributes are looked up on ``inner`` so the wrapper can stand in for it.
    """

    def __init__(self, inner, *, mode: str = "implicit", tile: int = 64, overlap: int = 32,
                 offset_range: int = 32, reset_every: int = 0, tile_batch: int = 4, seed: int = 0,
                 prediction: str = "x0", alphas_cumprod: Optional[torch.Tensor] = None):
        super().__init__()
        if mode not in MODES:
            raise ParamError(FEATURE, "mode", f"unknown tiling mode {mode!r}; expected one of {', '.join(MODES)}")
        tile = _check_int(tile, "tile", 16)
        if tile % 8:
            raise ParamError(FEATURE, "tile", f"must be a multiple of 8 latent px, got {tile}")
        overlap = _check_int(overlap, "overlap", 0)
        if mode == "explicit" and overlap >= tile:
            raise ParamError(FEATURE, "overlap", f"must be smaller than the tile ({tile}), got {overlap}")
        offset_range = _check_int(offset_range, "offset_range", 0)
        if mode == "implicit" and offset_range > tile:
            raise ParamError(FEATURE, "offset_range", f"must be at most the tile size ({tile}), got {offset_range}")
        reset_every = _check_int(reset_every, "reset_every", 0)
        tile_batch = _check_int(tile_batch, "tile_batch", 1)
        seed = _check_int(seed, "seed", -(2**63))
        if prediction not in PREDICTIONS:
            raise ParamError(FEATURE, "prediction", f"expected one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        if prediction != "x0" and mode == "implicit" and alphas_cumprod is None:
            raise ParamError(FEATURE, "prediction",
                             f"prediction={prediction!r} needs alphas_cumprod to carry values between steps")
        self.inner = inner
        self.mode, self.tile, self.overlap = mode, tile, overlap
        self.offset_range, self.reset_every, self.tile_batch, self.seed = offset_range, reset_every, tile_batch, seed
        self.prediction = prediction
        self._alphas = None if alphas_cumprod is None else torch.as_tensor(alphas_cumprod).detach().double().cpu()
        self.history: Optional[List[CallInfo]] = None
        self.reset()

    # -- state ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forgets the step, call counter and carried predictions (call before each sampling run)."""
        self._step = 0
        self._total: Optional[int] = None
        self._call = 0
        self._memory: Dict[Tuple[int, Tuple[int, ...]], Tuple[int, torch.Tensor]] = {}
        self._offsets: Dict[int, Tuple[int, int]] = {}
        self._grids: Dict[Any, _Grid] = {}
        self._last_boxes: Optional[Tuple[TileBox, ...]] = None

    def set_step(self, i: int, total: Optional[int] = None) -> None:
        """Declares that the following model calls belong to sampler step ``i`` (0-based) of ``total``."""
        i = int(i)
        if total is not None:
            self._total = int(total)
        if i == self._step:
            return
        self._step = i
        self._call = 0
        self._memory = {k: v for k, v in self._memory.items() if v[0] == i - 1}

    @property
    def step(self) -> int:
        return self._step

    def offset_for_step(self, step: int) -> Tuple[int, int]:
        """The grid offset ``(dx, dy)`` of a step in implicit mode (a pure function of seed and step)."""
        step = int(step)
        if self.mode != "implicit" or self.offset_range <= 1:
            return (0, 0)
        if self.reset_every > 0 and step % self.reset_every == 0:
            return (0, 0)
        off = self._offsets.get(step)
        if off is None:
            g = torch.Generator(device="cpu")
            g.manual_seed(_mix_seed(self.seed, step))
            d = torch.randint(0, self.offset_range, (2,), generator=g)
            off = self._offsets[step] = (int(d[0]), int(d[1]))
        return off

    def anchor_for_step(self, step: int) -> Tuple[bool, bool]:
        """Which corner implicit mode lays a shifted grid from: ``(x_from_end, y_from_end)`` cycles
        top-left, bottom-right, top-right, bottom-left with the step, so the strip left uncovered moves
        round the edges and every edge cell is denoised in at least a quarter of the steps (about half
        for most), without reset steps that put the fixed grid's seams back."""
        if self.mode != "implicit" or self.offset_for_step(step) == (0, 0):
            return (False, False)
        return _ANCHORS[int(step) % 4]

    def last_grid(self) -> Optional[Tuple[TileBox, ...]]:
        """The tile boxes of the most recent call (None before the first call)."""
        return self._last_boxes

    # -- grid ----------------------------------------------------------------------------------

    def _grid(self, h: int, w: int, offset: Tuple[int, int], cover_start: bool, anchor: Tuple[bool, bool], device, dtype) -> _Grid:
        key = (h, w, offset, cover_start, anchor, device, dtype)
        g = self._grids.get(key)
        if g is not None:
            return g
        t = self.tile
        if self.mode == "explicit":
            boxes = tile_grid(h, w, t, stride=t - self.overlap)
        else:
            boxes = tile_grid(h, w, t, offset[0], offset[1], cover_start=cover_start, anchor=anchor)
        th, tw = boxes[0].y1 - boxes[0].y0, boxes[0].x1 - boxes[0].x0
        if self.mode == "explicit":
            win = torch.ones(th, tw, dtype=torch.float64)
        else:
            win = _gauss_1d(th)[:, None] * _gauss_1d(tw)[None, :]
        wsum = torch.zeros(h, w, dtype=torch.float64)
        count = torch.zeros(h, w, dtype=torch.int32)
        for b in boxes:
            wsum[b.y0:b.y1, b.x0:b.x1] += win
            count[b.y0:b.y1, b.x0:b.x1] += 1
        weights: List[Optional[torch.Tensor]] = []
        for b in boxes:
            if bool((count[b.y0:b.y1, b.x0:b.x1] == 1).all()):
                weights.append(None)
            else:
                nw = torch.where(count[b.y0:b.y1, b.x0:b.x1] == 1, torch.ones_like(win),
                                 win / wsum[b.y0:b.y1, b.x0:b.x1])
                weights.append(nw.to(device=device, dtype=dtype)[None, None])
        covered = None if bool((count > 0).all()) else (count > 0).to(device)[None, None]
        if len(self._grids) > 16:
            self._grids.clear()
        g = self._grids[key] = _Grid(tuple(boxes), weights, covered, int((count == 0).sum()))
        return g

    # -- conversions between the model output and x0 ------------------------------------------

    def _coeffs(self, t: torch.Tensor, x: torch.Tensor):
        a = self._alphas
        t = t.detach().double().cpu().reshape(-1).clamp(0, len(a) - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=len(a) - 1)
        ac = a[lo] + (a[hi] - a[lo]) * (t - lo.double())
        sa = ac.sqrt().to(device=x.device, dtype=torch.float32).view(-1, 1, 1, 1)
        s1 = (1 - ac).sqrt().to(device=x.device, dtype=torch.float32).view(-1, 1, 1, 1)
        return sa, s1

    def _to_x0(self, out: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
        if self.prediction == "x0":
            return out.detach().clone()
        sa, s1 = self._coeffs(t, x)
        if self.prediction == "eps":
            return ((x.float() - s1 * out.float()) / sa).to(out.dtype)
        return (sa * x.float() - s1 * out.float()).to(out.dtype)

    def _from_x0(self, x0: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
        if self.prediction == "x0":
            return x0
        sa, s1 = self._coeffs(t, x)
        if self.prediction == "eps":
            return ((x.float() - sa * x0.float()) / s1).to(x0.dtype)
        return ((sa * x.float() - x0.float()) / s1).to(x0.dtype)

    # -- call ----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, sigma, cond=None, **kwargs):
        if cond is not None:
            kwargs["cond"] = cond
        B, _, H, W = x.shape
        step, k = self._step, self._call
        self._call += 1
        t = self.tile
        if H <= t and W <= t:
            self._last_boxes = (TileBox(0, 0, W, H),)
            self._record(step, k, x.shape, (0, 0), self._last_boxes, False, 0, 1)
            return self.inner(x, sigma, **kwargs)

        offset = self.offset_for_step(step) if self.mode == "implicit" else (0, 0)
        key = (k, tuple(x.shape))
        prev = None
        if self.mode == "implicit":
            m = self._memory.get(key)
            if m is not None and m[0] == step - 1:
                prev = m[1]
        need_extra = self.mode == "implicit" and prev is None and offset != (0, 0)
        grid = self._grid(H, W, offset, need_extra, self.anchor_for_step(step), x.device, x.dtype)
        boxes = grid.boxes

        acc = None
        n_inner = 0
        rep_cache: dict = {}
        for s in range(0, len(boxes), self.tile_batch):
            chunk = boxes[s:s + self.tile_batch]
            xt = _cut(x, chunk, 1)
            args = {name: _tile_arg(v, chunk, B, H, W, rep_cache) for name, v in kwargs.items()}
            out = self.inner(xt, _tile_arg(sigma, chunk, B, H, W, rep_cache), **args)
            n_inner += 1
            if acc is None:
                acc = torch.zeros((B, out.shape[1], H, W), device=out.device, dtype=out.dtype)
            for j, b in enumerate(chunk):
                o = out[j * B:(j + 1) * B]
                wgt = grid.weights[s + j]
                dst = acc[:, :, b.y0:b.y1, b.x0:b.x1]
                if wgt is None:
                    dst.copy_(o)
                else:
                    dst.addcmul_(o, wgt.to(o.dtype))

        carried = 0
        if grid.covered is not None:
            # prev exists here: without it the grid was given extra tiles and covers everything.
            fill = self._from_x0(prev, x, sigma)
            acc = torch.where(grid.covered, acc, fill.to(acc.dtype))
            carried = grid.uncovered
        if self.mode == "implicit":
            self._memory[key] = (step, self._to_x0(acc, x, sigma))
        self._last_boxes = boxes
        self._record(step, k, x.shape, offset, boxes, need_extra, carried, n_inner)
        return acc

    def _record(self, step, k, shape, offset, boxes, extra, carried, n_inner):
        if self.history is not None:
            self.history.append(CallInfo(step, k, tuple(shape), tuple(offset), tuple(boxes), extra, carried, n_inner))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        d = self.__dict__
        inner = d.get("_modules", {}).get("inner", d.get("inner"))
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)


def _check_int(v, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not hasattr(v, "__index__"):
        raise ParamError(FEATURE, name, f"expected an integer, got {v!r}")
    v = int(v)
    if v < minimum:
        raise ParamError(FEATURE, name, f"must be at least {minimum}, got {v}")
    return v


def _cut(v: torch.Tensor, boxes: Sequence[TileBox], f: int) -> torch.Tensor:
    if len(boxes) == 1:
        b = boxes[0]
        return v[:, :, b.y0 * f:b.y1 * f, b.x0 * f:b.x1 * f]
    return torch.cat([v[:, :, b.y0 * f:b.y1 * f, b.x0 * f:b.x1 * f] for b in boxes])


def _tile_arg(v, boxes: Sequence[TileBox], B: int, H: int, W: int, rep_cache: Optional[dict] = None):
    """One call argument for a batch of tiles (see :class:`TiledDenoiser`); ``rep_cache`` shares the
    per-tile repetitions of a tensor between chunks of the same size within one call."""
    if isinstance(v, torch.Tensor):
        if v.ndim == 0 or v.shape[0] != B:
            return v
        if v.ndim == 4 and v.shape[-2:] == (H, W):
            return _cut(v, boxes, 1)
        if v.ndim == 4 and v.shape[-2:] == (8 * H, 8 * W):
            return _cut(v, boxes, 8)
        n = len(boxes)
        if n == 1:
            return v
        key = (id(v), n)
        if rep_cache is not None and key in rep_cache:
            return rep_cache[key][1]
        r = v.repeat(n, *([1] * (v.ndim - 1)))
        if rep_cache is not None:
            rep_cache[key] = (v, r)  # holding v keeps its id unique for the cache's lifetime
        return r
    if isinstance(v, dict):
        return {k: _tile_arg(x, boxes, B, H, W, rep_cache) for k, x in v.items()}
    if isinstance(v, list):
        return [_tile_arg(x, boxes, B, H, W, rep_cache) for x in v]
    if isinstance(v, tuple):
        return tuple(_tile_arg(x, boxes, B, H, W, rep_cache) for x in v)
    return v
