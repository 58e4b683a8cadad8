"""Small random-weight models in Forge's shape: a ForgeDiffusionEngine with ``forge_objects`` (a U-Net patcher over
a KModel, the CLIP text encoders, the VAE patcher), no ``.model``, ``cond_stage_model`` or ``first_stage_model``; SD1
models can encode prompts through Forge's text processing engine over a CLIP text model.

The U-Net is ldm's ``UNetModel`` (tiny_sd's topologies) run by Forge's forward: transformer options, input/output
block patches (before the skip concat) and ControlNet's control added per block. Forge's own Upsample takes the
skip's size; ldm's doubles, so the stand-in resizes the backbone to the skip where they differ (odd tile sizes), as
A1111's ``cat`` hijack does.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from ldm.modules.diffusionmodules.util import timestep_embedding

from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.modules.k_model import KModel
from backend.nn.vae import DiagonalGaussianDistribution
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE
from backend.text_processing.classic_engine import ClassicTextProcessingEngine
from tiny_sd import HashTextEncoder, TinyAutoencoderKL, sd_alphas_cumprod, tiny_unet


def apply_control(h, control, name):
    if control is not None and name in control and len(control[name]) > 0:
        ctrl = control[name].pop()
        if ctrl is not None:
            h = h + ctrl
    return h


class ForgeUNet(torch.nn.Module):
    """Forge's IntegratedUNet2DConditionModel over ldm's blocks."""

    def __init__(self, unet):
        super().__init__()
        self.model_channels = unet.model_channels
        self.num_classes = unet.num_classes
        self.config = {"model_channels": unet.model_channels}
        self.time_embed, self.input_blocks, self.middle_block, self.output_blocks, self.out = (
            unet.time_embed, unet.input_blocks, unet.middle_block, unet.output_blocks, unet.out)
        if unet.num_classes is not None:
            self.label_emb = unet.label_emb

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        transformer_options["original_shape"] = list(x.shape)
        patches = transformer_options.get("patches", {})
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for i, module in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", i)
            h = apply_control(module(h, emb, context), control, "input")
            for patch in patches.get("input_block_patch", []):
                h = patch(h, transformer_options)
            hs.append(h)
        transformer_options["block"] = ("middle", 0)
        h = apply_control(self.middle_block(h, emb, context), control, "middle")
        for i, module in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", i)
            hsp = apply_control(hs.pop(), control, "output")
            if h.shape[-2:] != hsp.shape[-2:]:
                h = F.interpolate(h, size=hsp.shape[-2:], mode="nearest")
            for patch in patches.get("output_block_patch", []):
                h, hsp = patch(h, hsp, transformer_options)
            h = module(torch.cat([h, hsp], dim=1), emb, context)
        return self.out(h).type(x.dtype)


class ForgeAutoencoder(TinyAutoencoderKL):
    """Forge's IntegratedAutoencoderKL: ``encode`` samples the posterior (or applies a regulation)."""

    scaling_factor = 0.18215
    shift_factor = 0.0

    def encode(self, x, regulation=None):
        posterior = DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))
        return regulation(posterior) if regulation is not None else posterior.sample()

    def process_in(self, latent):
        return (latent - self.shift_factor) * self.scaling_factor

    def process_out(self, latent):
        return (latent / self.scaling_factor) + self.shift_factor


class TextEncoder(torch.nn.Module):
    """One of CLIP's encoders as Forge's text engine calls it (IntegratedCLIP): its ``transformer``."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer


class ForgeTinySD(ForgeDiffusionEngine):
    """``shared.sd_model`` on Forge for SD1.5 / SD2 / SDXL topologies (``family``) at tiny widths."""

    def __init__(self, family="sd1", seed=0, context_dim=None, clip=None):
        """``clip``: (tokenizer, transformers ``CLIPTextModel`` of the context width): prompts are then encoded as Forge's
        SD1.5 does, by a ClassicTextProcessingEngine over it (``text_processing_engine``); without it, by word hashes."""
        super().__init__()
        ctx = context_dim or {"sd1": 768, "sd2": 1024, "sdxl": 2048}[family]
        unet = UnetPatcher(KModel(ForgeUNet(tiny_unet(family, seed=seed, context_dim=context_dim))))
        encoders = torch.nn.Module()
        encoders.clip_l = TextEncoder(HashTextEncoder(ctx, seed=seed) if clip is None else clip[1])
        self.text_processing_engine = None
        if clip is not None:
            self.text_processing_engine = ClassicTextProcessingEngine(encoders.clip_l, clip[0], embedding_expected_shape=ctx)
        clip = types.SimpleNamespace(cond_stage_model=encoders, patcher=None)
        vae = VAE(model=ForgeAutoencoder(seed=seed))
        self.forge_objects = ForgeObjects(unet=unet, clip=clip, vae=vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sd1, self.is_sd2, self.is_sdxl = family == "sd1", family == "sd2", family == "sdxl"
        self.family = family
        self.alphas_cumprod = sd_alphas_cumprod().float()
        self.parameterization = "eps"
        self.latent_channels = 4
        self.sd_checkpoint_info = types.SimpleNamespace(name_for_extra="tiny", short_title="tiny", filename="tiny.safetensors")
        self.sd_model_hash = "0123abcd"

    def get_learned_conditioning(self, prompt):
        if self.text_processing_engine is not None:
            return self.text_processing_engine(prompt)
        c = self.forge_objects.clip.cond_stage_model.clip_l.transformer(list(prompt))
        if self.is_sdxl:
            return {"crossattn": c, "vector": F.pad(c.mean(dim=1), (0, max(0, 64 - c.shape[-1])))[:, :64]}
        return c

    def encode_first_stage(self, x):
        vae = self.forge_objects.vae
        sample = vae.first_stage_model.process_in(vae.encode(x.movedim(1, -1) * 0.5 + 0.5))
        return sample.to(x)

    def decode_first_stage(self, x):
        vae = self.forge_objects.vae
        sample = vae.decode(vae.first_stage_model.process_out(x)).movedim(-1, 1) * 2.0 - 1.0
        return sample.to(x)
