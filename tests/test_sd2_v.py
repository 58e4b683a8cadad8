"""SD2.x 768-v (v-prediction, SD2's U-Net topology) through the WebUI path: FreeU's stages and official values,
Any-Size Diffusion's tiled second pass, and tiling that stays exact through k-diffusion's v-denoiser."""

import k_diffusion
import pytest
import torch

from harness import same_images
from lib_freediff.asd.fstd import MODES, TiledDenoiser
from lib_freediff.freeu.unet import attached_hook_count
from lib_freediff.webui import runtime
from modules import shared
from tiny_sd import PointwiseUNet, TinySD, UNetAsLDM, sd2_unet_full_blocks

ASD = "Any-Size Diffusion"
FREEU = "FreeU"


@pytest.fixture(scope="module")
def sd1():
    """This module's model, an SD2.x 768-v one, in the place of conftest's SD1 model: conftest's ``webui`` (the
    extension loaded) and ``bare`` (without it) are built over it."""
    return TinySD("sd2", unet=sd2_unet_full_blocks(), parameterization="v")


@pytest.fixture(autouse=True)
def v_calls(sd1, monkeypatch):
    """Counts the v-denoiser's model calls: the generations below really go through v-prediction."""
    shared.sd_model = sd1
    calls = []
    original = k_diffusion.external.CompVisVDenoiser.get_v
    monkeypatch.setattr(k_diffusion.external.CompVisVDenoiser, "get_v", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    yield calls
    assert attached_hook_count(sd1.model.diffusion_model) == 0
    assert not runtime._sessions


def test_freeu_on_sd2_v(webui, bare, v_calls):
    assert same_images(bare.txt2img(), webui.txt2img({FREEU: [False]}))
    stages = []
    handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(
        lambda m, a: stages.append([(s.block_index, s.stage) for s in runtime.get(FREEU).freeu.patch.stages]))
    try:
        res = webui.txt2img({FREEU: [True]})
    finally:
        handle.remove()
    assert "FreeU: version=2 b1=1.4 b2=1.6 s1=0.9 s2=0.2 preset=SD2.1" in res.infotexts[0]  # Auto → SD2.1
    assert stages[0] == [(i, 1) for i in range(7)] + [(i, 2) for i in (7, 8, 9)]
    assert not same_images(res, bare.txt2img())
    assert v_calls


def test_any_size_on_sd2_v(webui, v_calls):
    sizes = []
    handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(lambda m, a: sizes.append(tuple(a[0].shape[-2:])))
    try:
        res = webui.txt2img({ASD: [{"enabled": True, "width": 200, "height": 120, "buckets": "96x64, 64x96, 64x64", "tile": 128,
                                    "offset_range": 64, "steps": 2}], FREEU: [True]}, steps=2)
    finally:
        handle.remove()
    assert res.images[0].size == (200, 120)
    info = res.infotexts[0]
    assert "Size: 96x64" in info and "Hires resize: 200x120" in info and "preset=SD2.1" in info
    assert sizes[0] == (8, 12) and all(h <= 16 and w <= 16 for h, w in sizes[2:])  # tiles of at most 128 px
    assert v_calls
    # the native buckets of SD2.x (768²): 1000×600 starts at 960×608
    from lib_freediff.webui import asd

    assert "First pass **960×608**" in asd.describe_plan({**asd.ASD_PARAMS.defaults(), "enabled": True, "width": 1000, "height": 600}, False)


@pytest.mark.parametrize("mode", MODES)
def test_tiling_is_exact_through_the_v_denoiser(mode):
    """With a per-cell U-Net, a tiled step through CompVisVDenoiser (x0 = c_skip·x + c_out·v) equals the untiled one."""
    den = k_diffusion.external.CompVisVDenoiser(UNetAsLDM(PointwiseUNet(context_dim=16)), quantize=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 30, 50, generator=g)
    cond = {"c_crossattn": [torch.randn(2, 7, 16, generator=g)]}
    with torch.no_grad():
        for s in (6.0, 0.5):
            sigma = torch.full((2,), s)
            ref = den(x, sigma, cond=cond)
            tiled = TiledDenoiser(den, mode=mode, tile=16, overlap=4, offset_range=8, seed=3)
            for i in range(3):  # shifted grids; the strip a shifted grid leaves carries the previous step's x0
                tiled.set_step(i, 3)
                torch.testing.assert_close(tiled(x, sigma, cond=cond), ref, rtol=1e-5, atol=1e-5)
