import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lib_freediff.asd.fstd import MODES, TiledDenoiser, _chunks, covering_overlap
from lib_freediff.asd.tiles import AxisLayout, TileBox, axis_layout, axis_starts, grid_plan, tile_grid
from lib_freediff.errors import ParamError
from seams import border_ratio, smooth_run, text_context
from tiny_sd import sd_alphas_cumprod

B, H, W = 2, 75, 125  # odd latent sizes on purpose


# -- helpers ---------------------------------------------------------------------------------------

def pointwise(x, sigma, cond=None, control=None):
    """A per-latent-cell denoiser that reads every kind of cond the wrapper must cut or repeat."""
    out = 0.5 * x + sigma.view(-1, 1, 1, 1)
    if "c_crossattn" in cond:
        out = out + cond["c_crossattn"][0].mean((1, 2)).view(-1, 1, 1, 1)
    else:  # SDXL layout
        out = out + cond["crossattn"].mean((1, 2)).view(-1, 1, 1, 1) + cond["vector"].mean(1).view(-1, 1, 1, 1)
    if cond.get("c_concat"):
        out = out + 0.25 * cond["c_concat"][0][:, :4]
    if control is not None:
        out = out + F.avg_pool2d(control, 8)[:, :1]
    return out


def make_inputs(seed=0, b=B, h=H, w=W):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, h, w, generator=g)
    cond = {"c_crossattn": [torch.randn(b, 7, 16, generator=g)], "c_concat": [torch.randn(b, 5, h, w, generator=g)]}
    control = torch.randn(b, 3, 8 * h, 8 * w, generator=g)
    sigma = torch.rand(b, generator=g) + 0.1
    return x, sigma, cond, control


def coverage(boxes, h, w):
    m = torch.zeros(h, w, dtype=torch.int32)
    for b in boxes:
        m[b.y0:b.y1, b.x0:b.x1] += 1
    return m


# -- grid ------------------------------------------------------------------------------------------

def test_axis_starts_clamp_and_cover():
    t64 = AxisLayout(2, 64, 64)
    assert axis_starts(128, t64) == [0, 64]
    assert axis_starts(128, t64, 10) == [10, 64]  # last tile clamped inside, [0, 10) uncovered
    assert axis_starts(75, AxisLayout(1, 64, 64), 20) == [11]  # one clamped tile leaves [0, 11) uncovered
    assert axis_starts(60, AxisLayout(1, 60, 60), 20) == [0]  # one tile spanning the axis: no offset
    assert axis_starts(128, AxisLayout(3, 64, 32)) == [0, 32, 64]
    assert axis_starts(128, t64, 70) == axis_starts(128, t64, 6)  # an offset wraps round the tile length
    assert axis_starts(128, t64, 10, from_end=True) == [0, 54]  # laid from the far end: [118, 128) uncovered
    for length, tile, off in itertools.product((64, 65, 75, 127, 128, 200), (16, 64), range(0, 16, 5)):
        lay = axis_layout(length, tile)
        s = axis_starts(length, lay, off)
        assert all(0 <= a <= max(0, length - lay.size) for a in s) and s == sorted(set(s))
        assert min(s) == (min(off % lay.size, length - lay.size) if length > lay.size else 0)
        assert max(s) + lay.size == length  # the far end is always covered


def test_axis_layout_rule():
    assert axis_layout(125, 64) == AxisLayout(2, 63, 63)  # 1000 px: 2 tiles of 63, not 2 of 64
    assert axis_layout(75, 64) == AxisLayout(2, 38, 38)  # 600 px
    assert axis_layout(64, 64) == AxisLayout(1, 64, 64) and axis_layout(22, 64) == AxisLayout(1, 22, 22)
    assert axis_layout(135, 64) == AxisLayout(3, 45, 45)  # 1080 px
    assert axis_layout(128, 64, 32) == AxisLayout(3, 64, 32)  # explicit, overlap 32
    assert axis_layout(65, 64, 32) == AxisLayout(2, 49, 17)
    for length, tile, overlap in itertools.product(range(1, 400), (16, 24, 64, 96), (0, 8, 15)):
        lay = axis_layout(length, tile, overlap)
        assert lay.size <= tile and lay.size <= length
        if length > tile:
            assert lay.count == math.ceil((length - overlap) / (tile - overlap))
            assert lay.stride == lay.size - overlap
            assert lay.count * lay.size - (lay.count - 1) * overlap >= length  # covers the axis
            assert (lay.count - 1) * lay.stride + lay.size - length < lay.count  # spare < one cell per tile
        else:
            assert lay == (1, length, length)


SIZE_SET = [(301, 173), (1000, 600), (1024, 1024), (1920, 1080), (2048, 2048), (3840, 2160)]


@pytest.mark.parametrize("px_w,px_h", SIZE_SET)
def test_every_cell_covered_n_tiles_no_larger_than_T(px_w, px_h):
    w, h = -(-px_w // 8), -(-px_h // 8)
    T = 64
    lx, ly = axis_layout(w, T), axis_layout(h, T)
    assert (lx.count, ly.count) == (math.ceil(w / T), math.ceil(h / T))
    covering = tile_grid(h, w, T, overlap=covering_overlap(T))  # a call with nothing to carry
    assert (coverage(covering, h, w) > 0).all() and all(b.x1 - b.x0 <= T and b.y1 - b.y0 <= T for b in covering)
    for dx, dy in itertools.product(range(0, 33, 4), range(0, 33, 5)):
        for anchor in ((False, False), (True, True), (True, False), (False, True)):
            shifted = tile_grid(h, w, T, dx, dy, anchor=anchor)
            covered = coverage(shifted, h, w) > 0  # all but the strip at the anchor's edges
            ys = slice(h - dy, h) if anchor[1] else slice(0, dy)
            xs = slice(w - dx, w) if anchor[0] else slice(0, dx)
            if ly.count > 1 and lx.count > 1:
                assert not covered[ys].any() and not covered[:, xs].any()
                strip = torch.zeros(h, w, dtype=torch.bool)
                strip[ys] = True
                strip[:, xs] = True
                assert (covered | strip).all()
            assert len({b.x0 for b in shifted}) <= lx.count and len({b.y0 for b in shifted}) <= ly.count
            assert all((b.x1 - b.x0, b.y1 - b.y0) == (lx.size, ly.size) for b in shifted)
            assert lx.size <= T and ly.size <= T


@pytest.mark.parametrize("px_w,px_h", SIZE_SET)
def test_counted_work_at_most_1_10_of_the_latent_area(px_w, px_h):
    """Counts the U-Net input area of every call of a 6-step implicit run (batch 2): each steady step evaluates at
    most 1.10× the latent area, the first (nothing to carry: the covering grid) at most 1.3×."""
    w, h = -(-px_w // 8), -(-px_h // 8)
    areas = {}

    def inner(x, sigma, cond=None):
        areas.setdefault(d.step, []).append(x.shape[0] // 2 * x.shape[-2] * x.shape[-1])
        return x * 0.5

    d = TiledDenoiser(inner, tile=64, offset_range=32, tile_batch=4, seed=1)
    x = torch.zeros(2, 4, h, w)
    for i in range(6):
        d.set_step(i)
        d(x, torch.ones(2))
    work = {i: sum(a) / (w * h) for i, a in areas.items()}
    assert len(work) == 6 and work[0] <= 1.3 and max(work[i] for i in range(1, 6)) <= 1.10, work
    assert grid_plan(w, h, 64).work(w, h) <= 1.10


def test_tile_grid_boxes():
    boxes = tile_grid(H, W, 32, dx=5, dy=9)
    m = coverage(boxes, H, W)
    assert (m[9:, 5:] > 0).all() and (m[:9] == 0).all() and (m[:, :5] == 0).all()
    assert all(b.x1 - b.x0 == 32 and b.y1 - b.y0 == 25 and b.x1 <= W and b.y1 <= H for b in boxes)  # 4×3 tiles of 32×25
    full = tile_grid(H, W, 32, overlap=3)
    assert (coverage(full, H, W) > 0).all() and len(full) == 5 * 3  # 125: 5 tiles of 28; 75: 3 of 27
    assert tile_grid(20, 30, 64) == [TileBox(0, 0, 30, 20)]


# -- exactness with a pointwise denoiser -----------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tile,seed", [(32, 0), (64, 1), (48, 7)])
def test_pointwise_equals_untiled(mode, tile, seed):
    x, sigma, cond, control = make_inputs(seed)
    ref = pointwise(x, sigma, cond, control=control)
    d = TiledDenoiser(pointwise, mode=mode, tile=tile, overlap=tile // 2, offset_range=tile // 2,
                      reset_every=0, tile_batch=3, seed=seed)
    d.history = []
    for i in range(5):
        d.set_step(i, 5)
        out = d(x, sigma, cond=cond, control=control)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        m = coverage(d.last_grid(), H, W)
        assert torch.equal(out[..., m == 1], ref[..., m == 1])  # single coverage: bit-exact
    offsets = {c.offset for c in d.history}
    assert (len(offsets) > 1) == (mode == "implicit")


def test_pointwise_sdxl_cond_layout():
    x, sigma, _, _ = make_inputs(3)
    g = torch.Generator().manual_seed(3)
    cond = {"crossattn": torch.randn(B, 7, 16, generator=g), "vector": torch.randn(B, 12, generator=g),
            "c_concat": [torch.randn(B, 4, H, W, generator=g)]}
    ref = pointwise(x, sigma, cond)
    d = TiledDenoiser(pointwise, tile=32, offset_range=16, seed=3, reset_every=0)
    for i in range(3):
        d.set_step(i)
        torch.testing.assert_close(d(x, sigma, cond=cond), ref, rtol=0, atol=1e-6)


def test_tile_batching_counts_inner_calls():
    x, sigma, cond, _ = make_inputs()
    seen = []

    def inner(x, sigma, cond):
        seen.append((x.shape[0], sigma.shape[0], cond["c_crossattn"][0].shape[0], cond["c_concat"][0].shape[0]))
        return pointwise(x, sigma, cond)

    d = TiledDenoiser(inner, mode="none", tile=32, tile_batch=5)
    d(x, sigma, cond=cond)
    n = len(d.last_grid())
    assert n == 3 * 4
    assert [s[0] for s in seen] == [4 * B, 4 * B, 4 * B]  # 12 tiles, at most 5 a call: three even calls
    assert all(len(set(s)) == 1 for s in seen)


def test_tile_hooks_are_told_each_tiled_call():
    """Each hook is entered around every tiled call of ``inner`` with the step, the call's position in the step, the
    whole latent's shape, the call's tiles (in batch order) and the rows each tile carries; never for a single tile."""
    from contextlib import contextmanager

    seen, inside = [], []

    @contextmanager
    def hook(call):
        inside.append(call)
        yield
        inside.pop()

    def inner(x, sigma, cond=None):
        seen.append((inside[-1] if inside else None, x.shape[0]))
        return pointwise(x, sigma, cond)

    x, sigma, cond, _ = make_inputs()
    d = TiledDenoiser(inner, tile=32, offset_range=16, tile_batch=5, seed=3)
    d.tile_hooks.append(hook)
    for i in range(2):
        d.set_step(i)
        for k in range(2):
            seen.clear()
            d(x, sigma, cond=cond)
            assert [c.boxes for c, _ in seen] == [tuple(d.last_grid()[s:e]) for s, e in _chunks(len(d.last_grid()), 5)]
            assert all(c.key == (k, (B, 4, H, W)) and (c.step, c.rows, c.height, c.width) == (i, B, H, W) and
                       n == len(c.boxes) * B for c, n in seen)
    assert not inside
    seen.clear()
    d(x[..., :30, :30], sigma, cond={"c_crossattn": cond["c_crossattn"]})  # one tile: the model is called directly
    assert seen == [(None, B)]


# -- carry-over ------------------------------------------------------------------------------------

def test_uncovered_cells_keep_previous_prediction():
    d = TiledDenoiser(pointwise, tile=32, offset_range=32, reset_every=0, seed=11)
    d.history = []
    prev = None
    for i in range(6):
        x, sigma, cond, _ = make_inputs(100 + i)  # a different latent every step
        d.set_step(i)
        out = d(x, sigma, cond=cond)
        ref = pointwise(x, sigma, cond)
        cov = coverage(d.last_grid(), H, W) > 0
        info = d.history[-1]
        if i == 0:
            assert info.covering and bool(cov.all())
        else:
            assert not info.covering
        assert info.carried_cells == int((~cov).sum())
        torch.testing.assert_close(out[..., cov], ref[..., cov], rtol=0, atol=1e-6)
        if prev is not None:
            assert torch.equal(out[..., ~cov], prev[..., ~cov])
        prev = out.clone()
    assert sum(c.carried_cells for c in d.history) > 0


def test_carry_is_keyed_by_call_position_and_shape():
    """cond and uncond in separate calls (same shape): call k of step i reuses call k of step i-1."""
    d = TiledDenoiser(pointwise, tile=32, offset_range=32, reset_every=0, seed=4)
    d.history = []
    outs = {}
    for i in range(4):
        d.set_step(i)
        d.set_step(i)  # a second set_step for the same step (e.g. per CFG call) changes nothing
        for k in range(2):
            x, sigma, cond, _ = make_inputs(10 * i + k)
            out = d(x, sigma, cond=cond)
            cov = coverage(d.last_grid(), H, W) > 0
            if i > 0:
                assert d.history[-1].call == k
                assert torch.equal(out[..., ~cov], outs[(i - 1, k)][..., ~cov])
            outs[(i, k)] = out
    # A batch-shape change has no usable memory: extra tiles cover everything.
    d.set_step(4)
    x, sigma, cond, _ = make_inputs(99, b=1)
    out = d(x, sigma, cond=cond)
    info = d.history[-1]
    if info.offset != (0, 0):
        assert info.covering
    assert info.carried_cells == 0
    torch.testing.assert_close(out, pointwise(x, sigma, cond), rtol=0, atol=1e-6)


def test_skipped_step_or_new_run_does_not_reuse_stale_memory():
    d = TiledDenoiser(pointwise, tile=32, offset_range=32, reset_every=0, seed=5)
    d.history = []
    x, sigma, cond, _ = make_inputs()
    for i in (0, 1, 3):  # step 2 never called: step 3 has no step-2 prediction
        d.set_step(i)
        d(x, sigma, cond=cond)
    assert d.history[-1].carried_cells == 0
    d.reset()
    assert d.step == 0 and d.last_grid() is None


def _alphas():
    return sd_alphas_cumprod()


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_carry_converts_through_x0(prediction):
    """A model whose x0 estimate never changes (it reads x0 from c_concat, cut with each tile):
    carried cells must convert to the current step's eps / v exactly, so the tiled output equals the
    untiled one everywhere although the latent and the timestep change every step."""
    ac = _alphas()
    g = torch.Generator().manual_seed(0)
    cond = {"c_concat": [torch.randn(B, 4, H, W, generator=g)]}

    def inner(x, t, cond):
        x0 = cond["c_concat"][0]
        a = ac[t.long()].float().sqrt().view(-1, 1, 1, 1)
        s = (1 - ac[t.long()]).float().sqrt().view(-1, 1, 1, 1)
        eps = (x - a * x0) / s
        return {"x0": x0, "eps": eps, "v": a * eps - s * x0}[prediction]

    d = TiledDenoiser(inner, tile=32, offset_range=32, reset_every=0, seed=2, prediction=prediction,
                      alphas_cumprod=ac)
    d.history = []
    for i, t in enumerate([900, 700, 500, 300, 100]):
        x = torch.randn(B, 4, H, W, generator=g)
        tt = torch.full((B,), t)
        d.set_step(i)
        torch.testing.assert_close(d(x, tt, cond=cond), inner(x, tt, cond), rtol=1e-4, atol=1e-4)
    assert sum(c.carried_cells for c in d.history) > 0


# -- real UNet -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_single_tile_is_bit_identical_real_unet(kdenoiser, mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 24, generator=g)
    sigma = torch.tensor([3.0, 0.5])
    cond = text_context(2)
    with torch.no_grad():
        ref = kdenoiser(x, sigma, cond=cond)
        for tile in (32, 64):
            d = TiledDenoiser(kdenoiser, mode=mode, tile=tile, overlap=16, offset_range=16, seed=1)
            for i in range(3):
                d.set_step(i)
                assert torch.equal(d(x, sigma, cond=cond), ref)


def test_wrapper_stands_in_for_the_k_diffusion_model(kdenoiser):
    d = TiledDenoiser(kdenoiser)
    assert torch.equal(d.get_sigmas(5), kdenoiser.get_sigmas(5))
    assert d.sigma_min == kdenoiser.sigma_min and d.inner_model is kdenoiser.inner_model
    holder = torch.nn.Module()
    holder.model_wrap = kdenoiser
    holder.model_wrap = d  # a registered child module can be replaced by the wrapper


SAMPLERS = {"sample_euler": 1, "sample_heun": 2, "sample_dpmpp_2m": 1}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_samplers_every_cell_denoised_or_carried(kdenoiser, sampler):
    import k_diffusion as K

    per_step = SAMPLERS[sampler]
    h, w, steps = 40, 56, 5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, h, w, generator=g)
    sigmas = kdenoiser.get_sigmas(steps)

    def run(seed):
        d = TiledDenoiser(kdenoiser, tile=16, offset_range=8, reset_every=3, tile_batch=4, seed=seed)
        d.history = []
        calls = [0]

        def model(x, sigma, **kw):  # the WebUI's step index as its CFG denoiser sees it
            d.set_step(calls[0] // per_step, steps)
            calls[0] += 1
            return d(x, sigma, **kw)

        with torch.no_grad():
            out = getattr(K.sampling, sampler)(model, x * sigmas[0], sigmas, extra_args={"cond": text_context()},
                                               disable=True)
        return out, d.history

    out, hist = run(seed=7)
    fresh = TiledDenoiser(kdenoiser, tile=16, offset_range=8, reset_every=3, seed=7)
    seen = set()
    for c in hist:
        cov = coverage(c.boxes, h, w) > 0
        has_prev = (c.step - 1, c.call, c.shape) in seen
        assert c.carried_cells == int((~cov).sum())
        assert bool(cov.all()) or has_prev  # uncovered cells only where a prediction can be carried
        assert c.covering == (not has_prev and c.offset != (0, 0))
        assert c.offset == fresh.offset_for_step(c.step)
        assert (c.offset == (0, 0)) or c.step % 3 != 0
        seen.add((c.step, c.call, c.shape))
    by_step = {}
    for c in hist:
        by_step.setdefault(c.step, set()).add(c.offset)
    assert sorted(by_step) == list(range(steps)) and all(len(v) == 1 for v in by_step.values())
    assert sum(c.carried_cells for c in hist) > 0
    if per_step == 2:
        assert max(c.call for c in hist) == 1
    out2, hist2 = run(seed=7)
    assert torch.equal(out, out2) and [c.offset for c in hist] == [c.offset for c in hist2]
    _, hist3 = run(seed=8)
    assert [c.offset for c in hist3] != [c.offset for c in hist]


def test_seams_on_real_unet(kdenoiser):
    """Stage-II-like run (a smooth latent denoised from sigma 3 over a 3x3 grid of 16-px tiles) with the
    tiny random UNet, whose zero padding and per-tile attention make tile edges visible."""
    T, L = 16, 48
    configs = {
        "none": dict(mode="none"),
        "explicit": dict(mode="explicit", overlap=T // 2),
        "fstd": dict(mode="implicit", offset_range=T // 2),  # default: rotating anchor, no resets
        "fstd_r4": dict(mode="implicit", offset_range=T // 2, reset_every=4),  # the reference's schedule
    }
    ratios = {k: 0.0 for k in ["untiled", *configs]}
    seeds = range(1, 9)  # per-seed ratios spread by ±0.13: fewer seeds cannot tell the variants apart
    for seed in seeds:
        ratios["untiled"] += border_ratio(smooth_run(kdenoiser, seed, L), T) / len(seeds)
        for name, cfg in configs.items():
            ratios[name] += border_ratio(smooth_run(TiledDenoiser(kdenoiser, tile=T, seed=seed, **cfg), seed, L), T) / len(seeds)
    excess = {k: v - ratios["untiled"] for k, v in ratios.items()}
    print("border ratios", {k: round(v, 3) for k, v in ratios.items()})
    assert excess["none"] > 0.4  # no overlap: clear seams at the fixed grid
    assert excess["explicit"] < 0.25 * excess["none"]
    assert ratios["fstd"] <= ratios["explicit"] + 0.02  # FSTD (default): at/below explicit overlap
    # the first step's covering grid (≤ 1.3× the area) against the shifted grid plus extra tiles it replaced
    # (up to 2.25×), which measured 0.873 on these seeds; carrying the start latent instead measured 0.934
    assert ratios["fstd"] <= 0.873
    assert excess["fstd_r4"] < 0.5 * excess["none"]  # resets to offset 0 leave a little at the fixed grid


@pytest.mark.parametrize("reset_every", [0, 4])
def test_every_cell_is_refreshed_often(reset_every):
    """With the rotating anchor every latent cell is denoised (not carried) in at least a quarter of the
    steps, edges included, as often as the reference's every-4th-step reset manages for its corner."""
    L, T, R, steps = 128, 64, 32, 40
    for seed in range(5):
        d = TiledDenoiser(pointwise, tile=T, offset_range=R, reset_every=reset_every, seed=seed)
        covered = torch.zeros(L, L)
        for i in range(steps):
            dx, dy = d.offset_for_step(i)
            covered += coverage(tile_grid(L, L, T, dx, dy, anchor=d.anchor_for_step(i)), L, L).clamp(max=1)
        assert (covered / steps).min() >= 0.2


# -- arguments -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,param", [
    (dict(mode="mixture"), "mode"),
    (dict(tile=60), "tile"),
    (dict(tile=8), "tile"),
    (dict(mode="explicit", tile=32, overlap=32), "overlap"),
    (dict(tile=32, offset_range=33), "offset_range"),
    (dict(tile_batch=0), "tile_batch"),
    (dict(reset_every=-1), "reset_every"),
    (dict(prediction="eps"), "prediction"),
    (dict(prediction="flow"), "prediction"),
    (dict(tile=64.0), "tile"),
])
def test_bad_arguments(kwargs, param):
    with pytest.raises(ParamError) as e:
        TiledDenoiser(pointwise, **kwargs)
    assert e.value.param == param and e.value.feature == "Any-Size Diffusion"
