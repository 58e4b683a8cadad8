"""FreeU inside a tiled pass (Any-Size Diffusion): the tiles of a step share the whole latent's statistics.

FreeU reads statistics of each batch item's whole feature map: v2's backbone factor normalises the channel-mean
map by its min and max; the skip filter scales the lowest spatial frequencies (at threshold 1: the mean and the
first harmonics, whose period is the map's size). A tiled pass runs the U-Net on tiles, so each tile would be
scaled by its own: its own min and max, its own mean scaled by ``s``. :class:`TileStats` gives every tile of a
step the same statistics instead, those of the whole latent at the **previous** step (the current step's are
not known until its last tile has run), gathered from that step's tiles:

* v2 backbone: the min and max of the channel-mean map over all tiles; the normalised map is clipped to [0, 1],
  as this step's values may leave the previous step's range.
* skip filter: the whole-image Fourier coefficients of the filter's box, computed from the tiles (each tile's
  cells weighted by their area, at their place in the whole latent); the tile is then ``h + (s − 1)·P``, ``P``
  that low-frequency component evaluated on the tile's cells: what FreeU does to the whole map,
  ``ifft(fft(h)·(1 + (s − 1)·box))``, restricted to the tile, with the previous step's box content.
  Cells two tiles cover (the clamped last tile, explicit overlap) count twice and the strip FSTD leaves uncovered
  not at all: a slightly different estimate of the whole map's, but one and the same for every tile.

With features that do not change between steps, the stitched tiles are exactly untiled FreeU
(tests/freeu/test_tiled.py); what the one-step lag changes is smooth across the latent, so it makes no seams.

Statistics are kept per output block, per model call of the step (its position and input shape, as the tiler
keys what it carries) and per row of the call (each tile carries all rows: cond and uncond rows apart). A call
with nothing from the previous step (the pass's first step, a shape change, a step FreeU skipped) uses each
tile's own statistics, as untiled FreeU would on that tile. Outside a tiled call nothing changes: untiled FreeU
is bit-identical to :mod:`lib_freediff.freeu.ops`.

Coupling: the tiler enters ``stats(call)`` around each U-Net call it makes on tiles (``call`` has ``step``,
``key``, ``boxes`` (latent px, ``x0, y0, x1, y1``), ``rows``, ``height``, ``width``: see
:class:`lib_freediff.asd.fstd.TileCall`); the FreeU stage function (:func:`lib_freediff.freeu.unet.apply_stage`)
asks it for the backbone and skip operations. Neither needs the other to work alone.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Dict, Hashable, Iterator, Optional, Tuple

import torch

from lib_freediff.freeu.ops import box_frequencies, fourier_filter, scale_backbone_


def _whole_length(length: int, tile_length: int, feature_length: int) -> int:
    """Cells of the whole latent's feature map along an axis, from a tile's: the U-Net halves a length per level,
    rounding up (the WebUI's U-Net takes any size), so the factor is the nearest power of two."""
    factor = 2 ** max(0, round(math.log2(tile_length / feature_length)))
    return -(-length // factor)


def _phases(starts, tile_length: int, feature_length: int, length: int, freqs, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``cos θ, sin θ``, ``θ = 2π·k·u/L`` at the centres ``u`` (latent px) of each tile's feature cells along an axis of
    the latent (length ``L``), for the frequencies ``k``: two (tiles, cells, freqs) float32 tensors."""
    cells = (torch.arange(feature_length, dtype=torch.float64) + 0.5) * (tile_length / feature_length)
    u = torch.tensor(starts, dtype=torch.float64)[:, None] + cells[None, :]
    angle = 2 * math.pi * u[..., None] * torch.tensor(freqs, dtype=torch.float64) / length
    return angle.cos().to(device, torch.float32), angle.sin().to(device, torch.float32)


def _box_coefficients(x: torch.Tensor, ey, ex) -> Tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of ``Σ x·exp(−iθy)·exp(−iθx)`` over each tile's cells, summed over the tiles:
    ``x`` (tiles, rows, C, h, w) → (rows, C, Ky, Kx) each. Real arithmetic only (complex matmuls are not on every
    device), and the feature-sized tensors are contracted first."""
    (cy, sy), (cx, sx) = ey, ex
    ar, ai = torch.einsum("trcyx,tyk->trckx", x, cy), -torch.einsum("trcyx,tyk->trckx", x, sy)
    real = torch.einsum("trckx,txl->rckl", ar, cx) + torch.einsum("trckx,txl->rckl", ai, sx)
    imag = torch.einsum("trckx,txl->rckl", ai, cx) - torch.einsum("trckx,txl->rckl", ar, sx)
    return real, imag


def _box_component(real: torch.Tensor, imag: torch.Tensor, ey, ex) -> torch.Tensor:
    """``Re Σ c·exp(iθy)·exp(iθx)`` over the box on each tile's cells: (rows, C, Ky, Kx) → (tiles, rows, C, h, w)."""
    (cy, sy), (cx, sx) = ey, ex
    br = torch.einsum("rckl,txl->trckx", real, cx) - torch.einsum("rckl,txl->trckx", imag, sx)
    bi = torch.einsum("rckl,txl->trckx", real, sx) + torch.einsum("rckl,txl->trckx", imag, cx)
    return torch.einsum("trckx,tyk->trcyx", br, cy) - torch.einsum("trckx,tyk->trcyx", bi, sy)


class TileStats:
    """Whole-latent statistics for FreeU's operations on the tiles of a tiled pass (module docstring)."""

    def __init__(self):
        self.applied = 0  # stage operations done with the whole latent's statistics (for tests and diagnostics)
        self.reset()

    def reset(self) -> None:
        """Forgets every statistic (call before each sampling run)."""
        self._call: Any = None
        self._step: Optional[int] = None
        self._cur: Dict[Hashable, Any] = {}
        self._prev: Dict[Hashable, Any] = {}

    @contextmanager
    def __call__(self, call) -> Iterator["TileStats"]:
        """Entered by the tiler around one U-Net call on tiles; a new step moves the statistics gathered so far to
        "previous" (kept only when the new step follows the step they were gathered in)."""
        if call.step != self._step:
            follows = self._step is not None and call.step == self._step + 1
            self._prev = self._cur if follows else {}
            self._cur = {}
            self._step = call.step
        self._call = call
        try:
            yield self
        finally:
            self._call = None

    def _tiles(self, h: torch.Tensor):
        """The current call, when ``h`` is a feature of it laid out as the tiler batches (tile-major, all rows a tile)."""
        call = self._call
        if call is None or h.dim() != 4 or h.shape[0] != len(call.boxes) * call.rows:
            return None
        return call

    def scale_backbone_(self, h: torch.Tensor, b: float, version: int, block: Hashable) -> torch.Tensor:
        """:func:`~lib_freediff.freeu.ops.scale_backbone_` with the previous step's whole-latent min and max (v2)."""
        call = self._tiles(h)
        if call is None or version == 1:
            return scale_backbone_(h, b, version)
        flat = h.mean(dim=1).flatten(1)
        lo = flat.min(dim=1).values.view(-1, call.rows).min(dim=0).values
        hi = flat.max(dim=1).values.view(-1, call.rows).max(dim=0).values
        key = ("range", block, call.key)
        seen = self._cur.get(key)
        self._cur[key] = (lo, hi) if seen is None else (torch.minimum(seen[0], lo), torch.maximum(seen[1], hi))
        prev = self._prev.get(key)
        if prev is None:
            return scale_backbone_(h, b, version)
        n = len(call.boxes)
        bounds = tuple(v.repeat(n).view(-1, 1, 1, 1).to(h.dtype) for v in prev)
        self.applied += 1
        return scale_backbone_(h, b, version, bounds)

    def fourier_filter(self, h: torch.Tensor, threshold: int, scale: float, block: Hashable) -> torch.Tensor:
        """:func:`~lib_freediff.freeu.ops.fourier_filter` with the previous step's whole-latent box content."""
        call = self._tiles(h)
        if call is None:
            return fourier_filter(h, threshold, scale)
        n, rows = len(call.boxes), call.rows
        c, fh, fw = h.shape[1:]
        first = call.boxes[0]
        th, tw = first.y1 - first.y0, first.x1 - first.x0
        ky = box_frequencies(_whole_length(call.height, th, fh), threshold)
        kx = box_frequencies(_whole_length(call.width, tw, fw), threshold)
        ey = _phases([b.y0 for b in call.boxes], th, fh, call.height, ky, h.device)  # (tiles, fh, Ky) × 2
        ex = _phases([b.x0 for b in call.boxes], tw, fw, call.width, kx, h.device)  # (tiles, fw, Kx) × 2
        x = h.float().view(n, rows, c, fh, fw)
        area = th * tw  # each cell weighted by its area (th·tw / (fh·fw) latent px); normalised by the area gathered
        real, imag = _box_coefficients(x, ey, ex)
        coeffs = (real * (area / (fh * fw)), imag * (area / (fh * fw)))
        key = ("box", block, call.key, ky, kx)
        seen = self._cur.get(key)
        if seen is None:
            self._cur[key] = (*coeffs, n * area)
        else:
            self._cur[key] = (seen[0] + coeffs[0], seen[1] + coeffs[1], seen[2] + n * area)
        prev = self._prev.get(key)
        if prev is None:
            return fourier_filter(h, threshold, scale)
        self.applied += 1
        low = _box_component(prev[0] / prev[2], prev[1] / prev[2], ey, ex)
        return (x + (scale - 1) * low).view(h.shape).to(h.dtype)
