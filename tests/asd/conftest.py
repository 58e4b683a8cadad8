"""Tiny real models for the ASD tests (random weights, seeded; CPU, one thread)."""

import pytest
import torch

from tiny_sd import UNetAsLDM

torch.set_num_threads(1)


def make_unet(seed=0, model_channels=32, in_channels=4):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=32, in_channels=in_channels, out_channels=4, model_channels=model_channels,
        attention_resolutions=[2], num_res_blocks=1, channel_mult=(1, 2), num_head_channels=16,
        use_spatial_transformer=True, transformer_depth=1, context_dim=32, legacy=False,
    ).eval()
    # ldm zero-initialises output convs/projections; a fresh random UNet would then predict eps == 0.
    for m in unet.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Conv1d)) and bool((m.weight == 0).all()):
            m.reset_parameters()
    return unet


@pytest.fixture(scope="session")
def kdenoiser():
    import k_diffusion as K

    from modules import sd_hijack_unet

    sd_hijack_unet.apply()  # as in the WebUI: the U-Net takes latents of any size (tiles need not be even)

    return K.external.CompVisDenoiser(UNetAsLDM(make_unet()))


class TinyVAE(torch.nn.Module):
    """ldm ``AutoencoderKL``'s inference surface (encoder, decoder, quant convs, encode, decode) without
    its pytorch-lightning base class, which this venv lacks."""

    def __init__(self, attn_resolutions=()):
        super().__init__()
        from ldm.modules.diffusionmodules.model import Decoder, Encoder

        dd = dict(double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3, ch=32, ch_mult=(1, 2),
                  num_res_blocks=1, attn_resolutions=list(attn_resolutions), dropout=0.0)
        self.encoder, self.decoder = Encoder(**dd), Decoder(**dd)
        self.quant_conv = torch.nn.Conv2d(8, 8, 1)
        self.post_quant_conv = torch.nn.Conv2d(4, 4, 1)

    def encode(self, x):
        from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


@pytest.fixture(scope="session")
def tiny_vae():
    torch.manual_seed(0)
    return TinyVAE().eval()
