"""Which output blocks FreeU changes, on ldm U-Nets of SD1.5, SD2.x and SDXL block layout, and that the
hooked forward equals a hand-written FreeU U-Net forward (the official code's loop)."""

import pytest
import torch

from lib_freediff.freeu.ops import fourier_filter, scale_backbone_
from lib_freediff.freeu.unet import FreeUFactors, FreeUPatch, attached_hook_count, find_stages
from lib_freediff.unet_info import model_family
from tiny_sd import sd2_unet_full_blocks, sd15_unet_full_blocks, sdxl_unet_full_blocks, tiny_unet

FACTORS = FreeUFactors(version=2, b1=1.5, b2=1.6, s1=0.9, s2=0.2)


def changed_blocks(unet, x, t, context, **kw):
    """Output blocks whose input FreeU rewrote, seen in one forward."""
    before, after = {}, {}
    handles = []
    for i, block in enumerate(unet.output_blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: before.__setitem__(i, a[0].clone()), prepend=True))
    with FreeUPatch(unet, FACTORS):
        for i, block in enumerate(unet.output_blocks):
            handles.append(block.register_forward_pre_hook(lambda m, a, i=i: after.__setitem__(i, a[0].clone())))
        with torch.no_grad():
            unet(x, t, context=context, **kw)
    for h in handles:
        h.remove()
    return sorted(i for i in before if not torch.equal(before[i], after[i]))


def test_sd15_layout_stages():
    unet = sd15_unet_full_blocks()
    stages = find_stages(unet)
    assert [s.block_index for s in stages if s.stage == 1] == [0, 1, 2, 3, 4, 5, 6]
    assert [s.block_index for s in stages if s.stage == 2] == [7, 8, 9]
    x = torch.randn(1, 4, 32, 32)
    assert changed_blocks(unet, x, torch.tensor([500]), torch.randn(1, 77, 64)) == list(range(10))
    assert attached_hook_count(unet) == 0


def test_sd2_layout_stages():
    """SD2.x (768-v / 512-base): SD1.5's levels with linear projections and context 1024: the same stages."""
    unet = sd2_unet_full_blocks()
    assert model_family(unet) == "sd2" and len(unet.output_blocks) == 12
    stages = find_stages(unet)
    assert [s.block_index for s in stages if s.stage == 1] == [0, 1, 2, 3, 4, 5, 6]
    assert [s.block_index for s in stages if s.stage == 2] == [7, 8, 9]
    assert {s.backbone_channels for s in stages} == {128, 64}  # 4× and 2× the base channels (1280 and 640 on SD2)
    x = torch.randn(1, 4, 32, 32)
    assert changed_blocks(unet, x, torch.tensor([500]), torch.randn(1, 77, 1024)) == list(range(10))
    assert attached_hook_count(unet) == 0


def test_sdxl_layout_stages():
    unet = sdxl_unet_full_blocks()
    stages = find_stages(unet)
    assert len(unet.output_blocks) == 9
    assert [s.block_index for s in stages if s.stage == 1] == [0, 1, 2, 3]
    assert [s.block_index for s in stages if s.stage == 2] == [4, 5, 6]
    x = torch.randn(1, 4, 32, 32)
    assert changed_blocks(unet, x, torch.tensor([500]), torch.randn(1, 77, 64)) == list(range(7))


def freeu_forward_by_hand(unet, x, timesteps, context, factors, stages):
    """ldm UNetModel.forward with FreeU written into the decoder loop, as the official code does."""
    from ldm.modules.diffusionmodules.util import timestep_embedding

    by_block = {s.block_index: s for s in stages}
    hs = []
    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False))
    h = x
    for module in unet.input_blocks:
        h = module(h, emb, context)
        hs.append(h)
    h = unet.middle_block(h, emb, context)
    for i, module in enumerate(unet.output_blocks):
        skip = hs.pop()
        if i in by_block:
            b, s = factors.for_stage(by_block[i].stage)
            h = scale_backbone_(h.clone(), b, factors.version)
            skip = fourier_filter(skip, factors.threshold, s)
        h = module(torch.cat([h, skip], dim=1), emb, context)
    return unet.out(h)


@pytest.mark.parametrize("make", [lambda: tiny_unet("sd1", context_dim=64), lambda: sd2_unet_full_blocks(context_dim=64)],
                         ids=["sd1", "sd2-full-blocks"])
def test_hooked_forward_equals_handwritten_freeu_unet(make):
    unet = make()
    x, t, ctx = torch.randn(2, 4, 32, 32), torch.tensor([900, 100]), torch.randn(2, 77, 64)
    with torch.no_grad():
        plain = unet(x, t, context=ctx)
        expected = freeu_forward_by_hand(unet, x, t, ctx, FACTORS, find_stages(unet))
        with FreeUPatch(unet, FACTORS):
            hooked = unet(x, t, context=ctx)
        after = unet(x, t, context=ctx)
    assert torch.allclose(hooked, expected, atol=1e-5)
    assert not torch.allclose(hooked, plain, atol=1e-3)
    assert torch.equal(after, plain)


def test_freeu_survives_a_replaced_unet_forward():
    """Another extension (ControlNet does this) replaces forward but still calls the output blocks."""
    unet = tiny_unet("sd1", context_dim=64)
    x, t, ctx = torch.randn(1, 4, 32, 32), torch.tensor([500]), torch.randn(1, 77, 64)
    expected = freeu_forward_by_hand(unet, x, t, ctx, FACTORS, find_stages(unet))
    original_forward = unet.forward
    unet.forward = lambda *a, **k: original_forward(*a, **k)
    with torch.no_grad(), FreeUPatch(unet, FACTORS):
        got = unet(x, t, context=ctx)
    assert torch.allclose(got, expected, atol=1e-5)
