"""Tile layouts of Any-Size Diffusion's tiled pass: pure integer maths, no torch (the panel's live plan
uses it too). All lengths are latent pixels (1 latent px = 8 image px).

Layout rules (per axis, each axis on its own, so tiles may be non-square):

* An axis of length ``L`` no longer than the largest tile ``T`` gets one tile spanning it.
* Otherwise it gets the fewest tiles of one length ``t ≤ T`` that cover it with the required overlap
  ``o`` (0 for the implicit and none modes): ``n = ceil((L − o) / (T − o))`` tiles of
  ``t = ceil((L + (n − 1)·o) / n)``. Without overlap that is ``n = ceil(L/T)`` tiles of ``ceil(L/n)``, so the
  ``n·t`` cells evaluated per axis exceed ``L`` by at most ``n − 1``: the work per step is the latent area
  plus less than one cell per tile and axis, at every size (1000×600 px: 2×2 tiles of 63×38 latent px,
  1.02× the area, where fixed 64² tiles cost 1.75×).
* Tile lengths need not be multiples of 8: the WebUI's U-Net takes any latent size (its ``cat`` hijack),
  as every 1000×600 generation shows.
* Origins along an axis are ``d, d + s, d + 2s, …`` (stride ``s = t − o``, offset ``d``) until a tile reaches
  the end; an origin past ``L − t`` is clamped to ``L − t`` (no wrap-around), so the last tile may overlap
  its neighbour. An offset at or beyond ``t`` wraps round to ``d mod t`` (the grid repeats with period
  ``t``). With ``d > 0`` the cells ``[0, d)`` are not covered. ``from_end`` lays the axis from its far end
  instead (the uncovered cells are then ``[L − d, L)``).
"""

from __future__ import annotations

from typing import List, NamedTuple, Tuple


class TileBox(NamedTuple):
    """A tile in latent px, PIL order ``(x0, y0, x1, y1)``; ``x1``/``y1`` exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int


class AxisLayout(NamedTuple):
    """``count`` tiles of ``size`` latent px along one axis, origins ``stride`` apart."""

    count: int
    size: int
    stride: int


def axis_layout(length: int, tile: int, overlap: int = 0) -> AxisLayout:
    """The fewest equal tiles no longer than ``tile`` covering ``length`` with ``overlap`` (module rules)."""
    if length <= tile:
        return AxisLayout(1, length, length)
    n = -(-(length - overlap) // (tile - overlap))
    size = -(-(length + (n - 1) * overlap) // n)
    return AxisLayout(n, size, size - overlap)


def axis_starts(length: int, layout: AxisLayout, offset: int = 0, from_end: bool = False) -> List[int]:
    """Tile origins along one axis of ``length`` for ``layout`` shifted by ``offset`` (module rules)."""
    size = layout.size
    if length <= size:
        return [0]
    if from_end:
        return sorted(length - size - s for s in axis_starts(length, layout, offset))
    offset %= size
    last = length - size
    starts: List[int] = []
    s = offset
    while True:
        c = min(s, last)
        if not starts or c != starts[-1]:
            starts.append(c)
        if s >= last:
            return starts
        s += layout.stride


def tile_grid(h: int, w: int, tile: int, dx: int = 0, dy: int = 0, *, overlap: int = 0,
              anchor: Tuple[bool, bool] = (False, False)) -> List[TileBox]:
    """The tile boxes (row-major) for an ``h × w`` latent with tiles of at most ``tile``, the grid shifted by
    ``(dx, dy)`` from the top-left corner; ``anchor = (x_from_end, y_from_end)`` lays an axis from its far
    end instead. Every box has the same size."""
    ly, lx = axis_layout(h, tile, overlap), axis_layout(w, tile, overlap)
    ys = axis_starts(h, ly, dy, anchor[1])
    xs = axis_starts(w, lx, dx, anchor[0])
    return [TileBox(x, y, x + lx.size, y + ly.size) for y in ys for x in xs]


class GridPlan(NamedTuple):
    """The steady-step tile grid of a ``w × h`` latent: ``cols × rows`` tiles of ``tile_w × tile_h``."""

    cols: int
    rows: int
    tile_w: int
    tile_h: int

    @property
    def tiles(self) -> int:
        return self.cols * self.rows

    def work(self, w: int, h: int) -> float:
        """U-Net input area per step ÷ latent area (an upper bound for a shifted implicit grid, whose clamped
        last tile can coincide with its neighbour)."""
        return self.tiles * self.tile_w * self.tile_h / (w * h)


def grid_plan(w: int, h: int, tile: int, overlap: int = 0) -> GridPlan:
    """Columns, rows and tile size a ``w × h`` latent gets with tiles of at most ``tile`` (module rules)."""
    lx, ly = axis_layout(w, tile, overlap), axis_layout(h, tile, overlap)
    return GridPlan(lx.count, ly.count, lx.size, ly.size)
