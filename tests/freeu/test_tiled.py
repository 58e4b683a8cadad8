"""FreeU inside a tiled pass (lib_freediff.freeu.tiled.TileStats): the tiles of a step share the whole latent's
statistics, gathered at the previous step; outside a tiled call FreeU is unchanged."""

import pytest
import torch

from lib_freediff.asd.fstd import TileCall, TiledDenoiser
from lib_freediff.asd.tiles import TileBox, tile_grid
from lib_freediff.freeu.ops import fourier_filter, scale_backbone_
from lib_freediff.freeu.tiled import TileStats
from lib_freediff.freeu.unet import FreeUFactors, FreeUPatch, apply_stage
from tiny_sd import PointwiseStagesUNet, tiny_unet

FACTORS = FreeUFactors(version=2, b1=1.5, b2=1.6, s1=0.9, s2=0.2)


def whole_freeu(feat, b=1.6, s=0.2, threshold=1):
    return scale_backbone_(feat.clone(), b, 2), fourier_filter(feat, threshold, s)


def crop(t, boxes, f):
    return torch.cat([t[:, :, b.y0 // f:b.y1 // f, b.x0 // f:b.x1 // f] for b in boxes])


def tiled_freeu(stats, feats, boxes, step, f, H, W, chunk, b=1.6, s=0.2, threshold=1):
    """Runs FreeU's two operations on every call of one step (``feats``: one whole feature map per call position,
    cut into the tiles of ``boxes``, ``chunk`` tiles a call); returns the stitched outputs per call position."""
    outs = []
    for k, feat in enumerate(feats):
        backbone, skip = [], []
        for start in range(0, len(boxes), chunk):
            part = tuple(boxes[start:start + chunk])
            with stats(TileCall(step, k, (feat.shape[0], 4, H, W), part, feat.shape[0], H, W)):
                x = crop(feat, part, f)
                backbone.append(stats.scale_backbone_(x.clone(), b, 2, "block"))
                skip.append(stats.fourier_filter(x, threshold, s, "block"))
        outs.append((torch.cat(backbone), torch.cat(skip)))
    return outs


@pytest.mark.parametrize("threshold", [1, 2])
def test_stitched_tiles_equal_whole_image_freeu(threshold):
    """Features that do not change between steps: from the second step on, the tiles' outputs are exactly the
    whole image's FreeU cut into tiles, each row (cond, uncond) and each call position of a step on its own."""
    g = torch.Generator().manual_seed(0)
    H, W, f = 32, 48, 4  # latent 32×48, features at 1/4: 8×12, tiles 16² → 4×4 feature tiles
    feats = [torch.randn(2, 6, H // f, W // f, generator=g) for _ in range(2)]  # two calls a step, two rows each
    boxes = tile_grid(H, W, 16)
    stats = TileStats()
    for step in range(3):
        outs = tiled_freeu(stats, feats, boxes, step, f, H, W, chunk=4, threshold=threshold)
        for feat, (backbone, skip) in zip(feats, outs):
            ref_backbone, ref_skip = whole_freeu(feat, threshold=threshold)
            per_tile = crop(feat, boxes, f)
            if step == 0:  # nothing gathered yet: each tile's own statistics, as before
                assert torch.equal(skip, fourier_filter(per_tile, threshold, 0.2))
                assert torch.equal(backbone, scale_backbone_(per_tile.clone(), 1.6, 2))
            else:
                torch.testing.assert_close(skip, crop(ref_skip, boxes, f), rtol=0, atol=1e-5)
                torch.testing.assert_close(backbone, crop(ref_backbone, boxes, f), rtol=0, atol=1e-5)
    assert stats.applied == 2 * 2 * 2 * 2  # steps 1, 2 × two calls × two chunks × (backbone, skip)


def test_one_tile_of_odd_size_is_the_whole_image_filter():
    """The whole-image box is found from a tile's feature size as the U-Net rounds odd lengths up (125 → 63)."""
    g = torch.Generator().manual_seed(1)
    H, W = 75, 125
    feat = torch.randn(1, 5, 38, 63, generator=g)
    stats = TileStats()
    for step in range(2):
        with stats(TileCall(step, 0, (1, 4, H, W), (TileBox(0, 0, W, H),), 1, H, W)):
            out = stats.fourier_filter(feat, 1, 0.2, 0)
        torch.testing.assert_close(out, fourier_filter(feat, 1, 0.2), rtol=0, atol=1e-5)


def test_statistics_only_from_the_step_before():
    g = torch.Generator().manual_seed(2)
    H, W, f = 32, 32, 2
    feat = torch.randn(1, 4, H // f, W // f, generator=g)
    boxes = tile_grid(H, W, 16)
    per_tile = crop(feat, boxes, f)
    stats = TileStats()
    for step, shared in ((0, False), (1, True), (3, False), (4, True), (0, False), (1, True)):  # a skipped step, a new run
        (backbone, skip), = tiled_freeu(stats, [feat], boxes, step, f, H, W, chunk=len(boxes))
        assert torch.equal(skip, fourier_filter(per_tile, 1, 0.2)) != shared
    stats.reset()
    (backbone, skip), = tiled_freeu(stats, [feat], boxes, 2, f, H, W, chunk=len(boxes))
    assert torch.equal(skip, fourier_filter(per_tile, 1, 0.2))


def test_v2_factor_clipped_to_1_b_with_the_previous_range():
    H, W, f = 16, 32, 1
    boxes = tile_grid(H, W, 16)
    ramp = torch.linspace(0, 1, H * W).view(1, 1, H, W).repeat(1, 4, 1, 1)
    stats = TileStats()
    tiled_freeu(stats, [ramp], boxes, 0, f, H, W, chunk=2)
    wider = ramp * 3 - 1  # leaves step 0's range [0, 1] on both sides
    (backbone, _), = tiled_freeu(stats, [wider], boxes, 1, f, H, W, chunk=2)
    x = crop(wider, boxes, f)[:, :2]
    factor = (backbone[:, :2] / x)[x.abs() > 1e-3]
    torch.testing.assert_close((factor.min().item(), factor.max().item()), (1.0, 1.6))


def test_untiled_freeu_unchanged_with_stats_attached():
    """TileStats consulted only inside a tiled call: an untiled forward, and a tiler call whose one tile spans the
    latent (the tiler calls the model directly), are bit-identical to FreeU without it."""
    unet = tiny_unet("sd1", context_dim=64)
    x, t, ctx = torch.randn(2, 4, 32, 32), torch.tensor([900, 100]), torch.randn(2, 77, 64)
    stats = TileStats()
    with torch.no_grad():
        with FreeUPatch(unet, FACTORS):
            plain = unet(x, t, context=ctx)
        with FreeUPatch(unet, FACTORS, tiles=stats):
            with_stats = unet(x, t, context=ctx)
            tiler = TiledDenoiser(lambda x, sigma, cond=None: unet(x, sigma, context=cond), tile=32, seed=1)
            tiler.tile_hooks.append(stats)
            for step in range(2):
                tiler.set_step(step)
                assert torch.equal(tiler(x, t, cond=ctx), plain)
    assert torch.equal(with_stats, plain) and stats.applied == 0


def test_apply_stage_is_the_hook_body():
    """The host-neutral stage function (what a Forge output-block patch calls) gives what the A1111 pre-hook does."""
    g = torch.Generator().manual_seed(3)
    h, hsp = torch.randn(2, 8, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    out_h, same_h = h.clone(), h.clone()
    out_hsp = apply_stage(out_h, hsp, FACTORS, 1)  # stage 1: b1, s1
    assert (FACTORS.b1, FACTORS.s1) == (1.5, 0.9)
    assert torch.equal(out_h, scale_backbone_(h.clone(), 1.5, 2))
    assert torch.equal(out_hsp, fourier_filter(hsp, 1, 0.9))
    same_hsp = apply_stage(same_h, hsp, FACTORS, 1, TileStats(), "block")  # outside a tiled call: plain FreeU
    assert torch.equal(same_h, out_h) and torch.equal(same_hsp, out_hsp)


def test_tiled_run_is_deterministic():
    import k_diffusion as K

    from seams import smooth_run
    from tiny_sd import UNetAsLDM

    unet = PointwiseStagesUNet(context_dim=32)
    den = K.external.CompVisDenoiser(UNetAsLDM(unet))
    outs = []
    for _ in range(2):
        stats = TileStats()
        tiler = TiledDenoiser(den, tile=16, offset_range=8, seed=5)
        tiler.tile_hooks.append(stats)
        with FreeUPatch(unet, FACTORS, tiles=stats):
            outs.append(smooth_run(tiler, 5, 48, steps=4))
        assert stats.applied > 0
    assert torch.equal(*outs)
