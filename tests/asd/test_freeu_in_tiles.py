"""FreeU inside the tiled pass: the seam metric of test_seams_on_real_unet with FreeU on stays at ASD-alone level
(tests/benchmarks/bench_freeu_tiles.py prints the full comparison)."""

import k_diffusion as K
import pytest

from lib_freediff.asd.fstd import TiledDenoiser
from lib_freediff.freeu.tiled import TileStats
from lib_freediff.freeu.unet import FreeUFactors, FreeUPatch
from seams import border_ratio, smooth_run
from tiny_sd import PointwiseStagesUNet, UNetAsLDM

T, L = 16, 48
FACTORS = FreeUFactors(version=2, b1=1.5, b2=1.6, s1=0.9, s2=0.2)
MODES = {"implicit": dict(mode="implicit", offset_range=T // 2), "explicit": dict(mode="explicit", overlap=T // 2),
         "none": dict(mode="none")}


def mean_ratio(unet, den, mode, freeu, seeds=range(1, 9)):
    total = 0.0
    for seed in seeds:
        tiler = TiledDenoiser(den, tile=T, seed=seed, **MODES[mode])
        patch = FreeUPatch(unet, FACTORS, tiles=TileStats())
        if freeu:
            tiler.tile_hooks.append(patch.tiles)
            patch.attach()
        try:
            total += border_ratio(smooth_run(tiler, seed, L), T)
        finally:
            patch.remove()
    return total / len(seeds)


@pytest.mark.parametrize("mode,bound", [("implicit", 0.008), ("explicit", 0.03), ("none", 0.03)])
def test_freeu_leaves_no_seams_of_its_own(mode, bound):
    """On a U-Net of 1×1 layers a tiled run equals the untiled one, so only FreeU's statistics can make tiles differ.
    Each tile on its own statistics raised the ratio by 0.015 (implicit), 0.078 (explicit) and 0.200 (none) on these
    seeds; on the whole latent's, by 0.000, 0.005 and 0.011."""
    unet = PointwiseStagesUNet(context_dim=32)
    den = K.external.CompVisDenoiser(UNetAsLDM(unet))
    alone, with_freeu = mean_ratio(unet, den, mode, False), mean_ratio(unet, den, mode, True)
    print(mode, round(alone, 3), round(with_freeu, 3))
    assert with_freeu - alone <= bound


def test_freeu_in_fstd_on_real_unet(kdenoiser):
    """The seam test's random ldm U-Net (FreeU's stage 2 on its deepest blocks), FSTD as shipped: ASD alone 0.860,
    with FreeU 0.871 (each tile's own statistics: 0.871): its own tile edges dominate; FreeU adds none."""
    unet = kdenoiser.inner_model.model
    alone, with_freeu = mean_ratio(unet, kdenoiser, "implicit", False), mean_ratio(unet, kdenoiser, "implicit", True)
    print(round(alone, 3), round(with_freeu, 3))
    assert with_freeu <= alone + 0.03
