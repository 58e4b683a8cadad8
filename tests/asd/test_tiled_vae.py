import pytest
import torch

from lib_freediff.asd.tiled_vae import receptive_padding, should_tile, tiled_decode, tiled_encode
from lib_freediff.errors import ParamError

from .conftest import TinyVAE


def _seam_jump(img, tile_px):
    """Largest mean |step| across a tile border divided by the median |step| between columns."""
    d = (img[..., 1:] - img[..., :-1]).abs().mean((0, 1, 2))
    borders = [b - 1 for b in range(tile_px, img.shape[-1], tile_px)]
    return (d[borders].max() / d.median()).item()


@pytest.mark.parametrize("store_device", [None, "cpu"])
def test_tiled_decode_matches_untiled(tiny_vae, store_device):
    z = torch.randn(2, 4, 37, 53, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_vae.decode(z)
    out = tiled_decode(tiny_vae, z, tile_latent=16, store_device=store_device)
    assert out.shape == ref.shape == (2, 3, 74, 106)
    err = (out - ref).abs().max().item()
    assert err < 1e-4 * max(1.0, ref.abs().max().item())
    assert _seam_jump(out, 32) == pytest.approx(_seam_jump(ref, 32), rel=1e-3)


def test_tiled_encode_matches_untiled(tiny_vae):
    x = torch.rand(2, 3, 96, 134, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = tiny_vae.encode(x)
    post = tiled_encode(tiny_vae, x, tile_px=32)
    assert type(post) is type(ref)
    torch.testing.assert_close(post.mean, ref.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(post.logvar, ref.logvar, rtol=0, atol=1e-5)
    assert torch.equal(post.mode(), post.mean)  # no sampling happens inside tiled_encode


def test_attention_inside_levels_is_global_and_exact():
    torch.manual_seed(3)
    vae = TinyVAE(attn_resolutions=(32,)).eval()  # self-attention at the lower level too
    z = torch.randn(1, 4, 30, 22)
    x = torch.rand(1, 3, 48, 80) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(tiled_decode(vae, z, tile_latent=8), vae.decode(z), rtol=0, atol=1e-4)
        torch.testing.assert_close(tiled_encode(vae, x, tile_px=16).mean, vae.encode(x).mean, rtol=0, atol=1e-4)


def test_single_tile_is_the_untiled_call(tiny_vae):
    z = torch.randn(1, 4, 16, 12)
    with torch.no_grad():
        assert torch.equal(tiled_decode(tiny_vae, z, tile_latent=16), tiny_vae.decode(z))
        x = torch.rand(1, 3, 32, 32)
        assert torch.equal(tiled_encode(tiny_vae, x, tile_px=64).mean, tiny_vae.encode(x).mean)


def test_smaller_padding_is_approximate_but_finite(tiny_vae):
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = tiny_vae.decode(z)
    exact_pad = receptive_padding(tiny_vae.decoder, "decoder")
    assert exact_pad == 9
    out = tiled_decode(tiny_vae, z, tile_latent=16, pad_latent=2)
    assert torch.isfinite(out).all() and (out - ref).abs().max() > 1e-3


def test_receptive_padding_of_the_sd_vae():
    from ldm.modules.diffusionmodules.model import Decoder, Encoder

    dd = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=(1, 2, 4, 4),
              num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    with torch.device("meta"):
        assert receptive_padding(Encoder(**dd), "encoder") == 88
        assert receptive_padding(Decoder(**dd), "decoder") == 15


def test_should_tile_and_bad_arguments(tiny_vae):
    assert should_tile(2048, 2049, 2048) and not should_tile(2048, 2048, 2048)
    assert should_tile(1024, 4100, 2048)
    for args in ((0, 512, 512), (512, 512, 0), (512.0, 512, 512), (True, 512, 512)):
        with pytest.raises(ParamError):
            should_tile(*args)
    x = torch.zeros(1, 3, 66, 64)
    with pytest.raises(ParamError) as e:
        tiled_encode(tiny_vae, torch.zeros(1, 3, 65, 64), tile_px=32)
    assert e.value.param == "x"
    with pytest.raises(ParamError) as e:
        tiled_encode(tiny_vae, x, tile_px=33)
    assert e.value.param == "vae_tile_px"
    with pytest.raises(ParamError) as e:
        tiled_decode(tiny_vae, torch.zeros(1, 4, 20, 20), tile_latent=0)
    assert e.value.param == "vae_tile_latent"
    with pytest.raises(ParamError) as e:
        tiled_decode(tiny_vae, torch.zeros(1, 4, 20, 20), tile_latent=8, pad_latent=-1)
    assert e.value.param == "vae_pad_latent"
