"""Tiled denoising for stage II of Any-Size Diffusion: FSTD "implicit overlap" (random per-step grid
offset, uncovered cells carried from the previous step), plus explicit overlap (MultiDiffusion-style
averaging) and a fixed non-overlapping grid, for comparison.

All sizes and coordinates in this module are latent pixels (1 latent px = 8 image px).

Grid rules (shared by every mode; the layout maths is in :mod:`lib_freediff.asd.tiles`):

* Each axis gets the fewest tiles of one length no larger than ``tile`` that cover it (with ``overlap``
  in explicit mode), so a step evaluates the latent area plus less than one cell per tile and axis:
  ``n = ceil(L/T)`` tiles of ``ceil(L/n)`` along an axis of length ``L`` (non-overlapping modes). Tiles may
  be non-square and need not be multiples of 8. Origins are clamped inside the latent (no wrap-around),
  so the last tile may overlap its neighbour.
* ``implicit``: non-overlapping tiles, the grid shifted by the step's random offset ``d`` (taken modulo the
  tile length); cells in ``[0, d)`` are not covered. A shifted grid is laid from a corner that rotates with
  the step (top-left, bottom-right, top-right, bottom-left; an axis laid from its far end mirrors the
  rule), so the uncovered strip moves round the edges: every cell is denoised in at least about a
  quarter of the steps without reset steps.
* ``explicit``: tiles overlapping by ``overlap``, no offset.  ``none``: non-overlapping, no offset.

Blending: explicit mode averages overlapping tiles with uniform weights. Implicit and none modes
blend the (clamped or extra) overlaps with a separable Gaussian window per tile (σ = tile/4),
normalised where tiles meet; a cell covered by one tile gets exactly that tile's value.

Carry-over (implicit mode): the output of call ``k`` of step ``i`` (its position among the model calls
made since ``set_step(i)``) is kept, as x0, keyed by ``(k, x.shape)``; call ``k`` of step ``i+1`` with
the same shape takes its uncovered cells from it. Where nothing can be carried (the first step, a shape
change, a step skipped), the call covers the latent with tiles of at most ``tile`` overlapping by
``tile // 10`` (:func:`covering_overlap`), Gaussian-blended: at most 1.3× the latent area, where the
shifted grid plus an extra row and column of tiles cost up to 2.25×. (Carrying the pass's starting
latent into the first step's uncovered strip instead costs nothing, but measured more seams: border
ratio 0.97 against 0.91 for the extra tiles and 0.89 for this, over 16 seeds of the seam test.)
"""

from __future__ import annotations

from dataclasses import dataclass
from contextlib import ExitStack
from typing import Any, Callable, ContextManager, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from lib_freediff.asd.tiles import TileBox, tile_grid
from lib_freediff.errors import ParamError


FEATURE = "Any-Size Diffusion"

MODES = ("implicit", "explicit", "none")
PREDICTIONS = ("x0", "eps", "v")


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
    covering: bool  # nothing to carry: the overlapping covering grid was used
    carried_cells: int  # latent cells (per sample) taken from the previous step
    inner_calls: int


class TileCall(NamedTuple):
    """One U-Net call the tiler makes on tiles, as :attr:`TiledDenoiser.tile_hooks` are told of it."""

    step: int
    call: int  # position among the model calls of the step
    shape: Tuple[int, ...]  # the whole latent's (B, C, H, W)
    boxes: Tuple[TileBox, ...]  # the call's tiles, concatenated in this order along the batch dim
    rows: int  # B: each tile carries every row of the latent (cond and uncond rows alike)
    height: int
    width: int

    @property
    def key(self) -> Tuple[int, Tuple[int, ...]]:
        """What identifies "the same call" from one step to the next (as the carried predictions are keyed)."""
        return (self.call, self.shape)


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
    through ``inner`` per call (the tiles of a step split as evenly as possible between the calls),
    concatenated tile-major along the batch dim; :attr:`tile_context`, when set, is entered around each, and so is
    every one of :attr:`tile_hooks` (called with the :class:`TileCall`: e.g. FreeU's whole-latent statistics,
    :class:`lib_freediff.freeu.tiled.TileStats`).

    Steps: call :meth:`set_step` before the model calls of each sampler step (calling it again with
    the same index is a no-op) and :meth:`reset` before each sampling run. Offsets: step ``i`` uses
    ``(0, 0)`` when ``reset_every > 0`` and ``i % reset_every == 0`` (the reference resets every 4th
    step; the default, 0, never does, as the rotating anchor already refreshes the edges),
    otherwise ``(dx, dy)`` drawn uniformly from ``[0, offset_range)`` by a generator seeded from
    ``(seed, i)`` only, so every call of a step uses the same offset whatever happened before
    (along an axis whose tiles are shorter than the offset, it wraps round: ``d mod`` the tile length).

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
        # entered around each tiled call of ``inner`` with (boxes, rows per tile, H, W): lets the host give
        # state that lives outside the call's arguments (e.g. another extension's control images) per tile
        self.tile_context: Optional[Callable[[Sequence[TileBox], int, int, int], ContextManager]] = None
        # also entered around each tiled call, told the step and call too: what keeps state across a step's tiles
        self.tile_hooks: List[Callable[[TileCall], ContextManager]] = []
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

    def _grid(self, h: int, w: int, offset: Tuple[int, int], covering: bool, anchor: Tuple[bool, bool], device, dtype) -> _Grid:
        key = (h, w, offset, covering, anchor, device, dtype)
        g = self._grids.get(key)
        if g is not None:
            return g
        t = self.tile
        if self.mode == "explicit":
            boxes = tile_grid(h, w, t, overlap=self.overlap)
        elif covering:
            boxes = tile_grid(h, w, t, overlap=covering_overlap(t))
        else:
            boxes = tile_grid(h, w, t, offset[0], offset[1], anchor=anchor)
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
        covering = self.mode == "implicit" and prev is None and offset != (0, 0)
        grid = self._grid(H, W, offset, covering, self.anchor_for_step(step), x.device, x.dtype)
        boxes = grid.boxes

        acc = None
        n_inner = 0
        rep_cache: dict = {}
        for s, e in _chunks(len(boxes), self.tile_batch):
            chunk = boxes[s:e]
            xt = _cut(x, chunk, 1)
            args = {name: _tile_arg(v, chunk, B, H, W, rep_cache) for name, v in kwargs.items()}
            with ExitStack() as stack:
                if self.tile_context is not None:
                    stack.enter_context(self.tile_context(chunk, B, H, W))
                for hook in self.tile_hooks:
                    stack.enter_context(hook(TileCall(step, k, tuple(x.shape), tuple(chunk), B, H, W)))
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
            # prev exists here: without it the covering grid was used.
            fill = self._from_x0(prev, x, sigma)
            acc = torch.where(grid.covered, acc, fill.to(acc.dtype))
            carried = grid.uncovered
        if self.mode == "implicit":
            self._memory[key] = (step, self._to_x0(acc, x, sigma))
        self._last_boxes = boxes
        self._record(step, k, x.shape, offset, boxes, covering, carried, n_inner)
        return acc

    def _record(self, step, k, shape, offset, boxes, covering, carried, n_inner):
        if self.history is not None:
            self.history.append(CallInfo(step, k, tuple(shape), tuple(offset), tuple(boxes), covering, carried, n_inner))

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


def covering_overlap(tile: int) -> int:
    """Overlap of the grid a call with nothing to carry uses: ``tile // 10`` (at least 1), which keeps its work
    at most 1.3× the latent area at every size (1.21× at 1024² with 64-px tiles) and blends its tiles' borders."""
    return max(1, tile // 10)


def default_tile_batch(device) -> int:
    """Tiles per U-Net call when the user leaves it to us: 1 on the CPU, where batching tiles saves no time and
    multiplies the call's activation memory (measured: tests/benchmarks/bench_asd.py), 4 on an accelerator,
    where fewer, larger calls keep it busy."""
    kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]
    return 1 if kind == "cpu" else 4


def _chunks(n: int, per_call: int) -> List[Tuple[int, int]]:
    """``[start, end)`` of ``ceil(n / per_call)`` runs of tiles, as even in size as possible (9 tiles, 4 a call:
    3 + 3 + 3, not 4 + 4 + 1), so every call of a step has about the same shape."""
    calls = -(-n // per_call)
    bounds = [n * i // calls for i in range(calls + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


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


def crops_in_rows(full: torch.Tensor, boxes: Sequence[TileBox], rows: int, scale: int = 1,
                  single_as_is: bool = True) -> torch.Tensor:
    """What a tiled call's rows need of a whole-image tensor ``full`` at ``scale``× the latent, with one row or one
    per image (``rows`` a multiple of that: the row chunks of a tile, cond/uncond, each over the images): the crop of
    each of the call's tiles laid over the ``rows`` rows of its tile, tile-major. One tile: its crop itself when
    ``single_as_is`` (the host broadcasts it, as it does its own controls)."""
    crops = [full[:, :, b.y0 * scale:b.y1 * scale, b.x0 * scale:b.x1 * scale] for b in boxes]
    if len(crops) == 1 and single_as_is:
        return crops[0]
    return torch.cat([c.expand(rows, *c.shape[1:]) if c.shape[0] == 1 else c.repeat(rows // c.shape[0], 1, 1, 1)
                      for c in crops])


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
