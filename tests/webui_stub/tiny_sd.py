"""Random-weight Stable Diffusion models in the real architectures, shaped like the WebUI's sd_model.

U-Nets are ldm's ``UNetModel`` (SD1.5 / SD2 / SDXL topologies at small widths for tests; full-size SD1.5
and SDXL U-Nets for benchmarks); the VAE is ldm's Encoder/Decoder pair with AutoencoderKL's key layout
(the Lightning wrapper itself needs pytorch_lightning, which the WebUI ships but tests do not need).
"""

from __future__ import annotations

import hashlib
import types

import torch
from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.model import Decoder, Encoder
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution


def randomize_zero_init(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """ldm zero-initialises output convs (a trained model is never zero there); give them weights so
    a random model's output depends on every block."""
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() > 1 and not param.any():
                param.copy_(torch.randn(param.shape, generator=g) * scale)
    return module


def with_label_emb(unet: UNetModel, adm_in_channels: int) -> UNetModel:
    """SDXL's class embedding of the pooled text + size vector (``y``), as sgm builds it (ldm's UNetModel lacks it)."""
    width = unet.time_embed[0].out_features  # 4 × model_channels
    unet.num_classes = "sequential"
    unet.label_emb = torch.nn.Sequential(torch.nn.Sequential(
        torch.nn.Linear(adm_in_channels, width), torch.nn.SiLU(), torch.nn.Linear(width, width)))
    unet.adm_in_channels = adm_in_channels
    return unet


def tiny_unet(family="sd1", model_channels=32, in_channels=4, seed=0, context_dim=None, attention_resolutions=None):
    """A small UNetModel of the family's topology: SD1.5 (4 levels, attention at 3), SD2 (linear
    projections, context 1024, head width 64), SDXL (3 levels, attention at the 2 lower, context 2048,
    label embedding); ``context_dim`` narrows the cross-attention width for speed where family facts
    (context width) do not matter; ``attention_resolutions`` (e.g. ``[4]``: the deepest level only) spares the
    full-resolution self-attention where large images are rendered for their sizes alone."""
    torch.manual_seed(seed)
    if family == "sdxl":
        unet = UNetModel(image_size=32, in_channels=in_channels, out_channels=4, model_channels=model_channels,
                         attention_resolutions=attention_resolutions or [2, 4], num_res_blocks=1, channel_mult=(1, 2, 4), num_head_channels=16,
                         use_spatial_transformer=True, use_linear_in_transformer=True, transformer_depth=1,
                         context_dim=context_dim or 2048, legacy=False)
        with_label_emb(unet, 64)
    elif family == "sd2":
        unet = UNetModel(image_size=32, in_channels=in_channels, out_channels=4, model_channels=model_channels,
                         attention_resolutions=attention_resolutions or [4, 2, 1], num_res_blocks=1, channel_mult=(1, 2, 4, 4),
                         num_head_channels=16, use_spatial_transformer=True, use_linear_in_transformer=True, transformer_depth=1,
                         context_dim=context_dim or 1024, legacy=False)
    else:
        unet = UNetModel(image_size=32, in_channels=in_channels, out_channels=4, model_channels=model_channels,
                         attention_resolutions=attention_resolutions or [4, 2, 1], num_res_blocks=1, channel_mult=(1, 2, 4, 4),
                         num_heads=8, use_spatial_transformer=True, transformer_depth=1, context_dim=context_dim or 768, legacy=False)
    return randomize_zero_init(unet, seed).eval()


def sd15_unet_full_blocks(model_channels=32, seed=0, context_dim=64):
    """SD1.5's exact block layout (2 res blocks a level, 12 output blocks) at a small width."""
    torch.manual_seed(seed)
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=model_channels,
                     attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=(1, 2, 4, 4), num_heads=8,
                     use_spatial_transformer=True, transformer_depth=1, context_dim=context_dim, legacy=False)
    return randomize_zero_init(unet, seed).eval()


def sd2_unet_full_blocks(model_channels=32, seed=0, context_dim=1024):
    """SD2.x's block layout (768-v and 512-base: SD1.5's levels and 12 output blocks, linear transformer
    projections, fixed-width heads, context 1024) at a small width."""
    torch.manual_seed(seed)
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=model_channels,
                     attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=(1, 2, 4, 4), num_head_channels=16,
                     use_spatial_transformer=True, use_linear_in_transformer=True, transformer_depth=1,
                     context_dim=context_dim, legacy=False)
    return randomize_zero_init(unet, seed).eval()


def sdxl_unet_full_blocks(model_channels=32, seed=0, context_dim=64, adm_in_channels=0):
    """SDXL's block layout (3 levels, 2 res blocks a level, 9 output blocks) at a small width; with SDXL's ``y``
    embedding when ``adm_in_channels`` is given."""
    torch.manual_seed(seed)
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=model_channels,
                     attention_resolutions=[2, 4], num_res_blocks=2, channel_mult=(1, 2, 4), num_head_channels=16,
                     use_spatial_transformer=True, use_linear_in_transformer=True, transformer_depth=1,
                     context_dim=context_dim, legacy=False)
    if adm_in_channels:
        with_label_emb(unet, adm_in_channels)
    return randomize_zero_init(unet, seed).eval()


def sd15_unet(seed=0):
    """SD1.5's U-Net at full size (model_channels 320, context 768; 860 M parameters), random weights."""
    torch.manual_seed(seed)
    unet = UNetModel(image_size=64, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                     num_res_blocks=2, channel_mult=(1, 2, 4, 4), num_heads=8, use_spatial_transformer=True,
                     transformer_depth=1, context_dim=768, legacy=False)
    return randomize_zero_init(unet, seed).eval()


SDXL_ADM_CHANNELS = 2816  # pooled CLIP-G text (1280) + 6 size/crop embeddings of 256


def sdxl_unet(seed=0):
    """SDXL base's U-Net at full size (2.57 G parameters), random weights. ldm's ``UNetModel`` takes one transformer
    depth for every level and its ``SpatialTransformer`` runs only depth 1 with a single context, so the U-Net is
    built with depth 1 and every transformer is then rebuilt as sgm builds it (:class:`SgmSpatialTransformer`):
    depth 2 at the 640-channel level and 10 at the 1280-channel level and the middle block, SDXL's per-level
    depths 0/2/10 with its state-dict keys and shapes."""
    torch.manual_seed(seed)
    mc = 320
    unet = UNetModel(image_size=128, in_channels=4, out_channels=4, model_channels=mc, attention_resolutions=[2, 4],
                     num_res_blocks=2, channel_mult=(1, 2, 4), num_head_channels=64, use_spatial_transformer=True,
                     use_linear_in_transformer=True, transformer_depth=1, context_dim=2048, legacy=False)
    depth = {2 * mc: 2, 4 * mc: 10}
    for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]:
        for i, layer in enumerate(block):
            if isinstance(layer, SpatialTransformer):
                ch = layer.in_channels
                block[i] = SgmSpatialTransformer(ch, ch // 64, 64, depth=depth[ch], context_dim=[2048] * depth[ch],
                                                 use_linear=True)
    return randomize_zero_init(with_label_emb(unet, SDXL_ADM_CHANNELS), seed).eval()


class SgmSpatialTransformer(SpatialTransformer):
    """ldm's SpatialTransformer as sgm runs it: every block of a deeper transformer gets the one context
    (ldm's indexes a list of contexts by block and fails past the first)."""

    def forward(self, x, context=None):
        if not isinstance(context, list):
            context = [context] * len(self.transformer_blocks)
        return super().forward(x, context=context)


def to_webui_precision(module: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` on ``device`` for a run in ``dtype`` under autocast, as the WebUI runs a half-precision model:
    weights in ``dtype`` on a GPU; on the CPU, whose GroupNorm takes no half weights beside float input (ldm's
    GroupNorm32 upcasts its input), they stay float32 and autocast computes in ``dtype``. ``alphas_cumprod``
    stays float32 (as the WebUI keeps it through ``model.half()``), and every U-Net's ``dtype`` (what its forward
    casts the input to) is set, as the WebUI sets it."""
    module = module.to(device)
    if torch.device(device).type != "cpu":
        kept = {m: m.alphas_cumprod for m in module.modules() if isinstance(getattr(m, "alphas_cumprod", None), torch.Tensor)}
        module = module.to(dtype)
        for m, alphas in kept.items():
            m.alphas_cumprod = alphas
    for m in module.modules():
        if isinstance(m, UNetModel):
            m.dtype = dtype
    return module


class PointwiseUNet(torch.nn.Module):
    """A U-Net stand-in whose output at a latent cell depends on that cell, the timestep and its row's context only,
    so a tiled run of it must equal the untiled one. Its ``attn2`` (a cross-attention's place) lets extensions that
    patch cross-attention outputs (IP-Adapter) act on it."""

    def __init__(self, context_dim=64, in_channels=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.mix = torch.nn.Conv2d(in_channels, 4, 1)
        self.attn2 = torch.nn.Linear(context_dim, 4)

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        per_row = self.attn2(context).mean(1)[:, :, None, None]
        return 0.5 * self.mix(x) + per_row + 1e-3 * timesteps.view(-1, 1, 1, 1)


class _PointwiseLayer(torch.nn.Module):
    """A 1×1 "ResBlock": states ``channels`` / ``out_channels`` as ldm's does (FreeU finds its stages by them)."""

    def __init__(self, channels, out_channels):
        super().__init__()
        self.channels, self.out_channels = channels, out_channels
        self.conv = torch.nn.Conv2d(channels, out_channels, 1)
        self.emb = torch.nn.Linear(channels, out_channels)

    def forward(self, x, emb):
        return torch.tanh(self.conv(x) + self.emb(emb[:, : self.channels])[:, :, None, None])


class _PointwiseSequential(torch.nn.Sequential):
    def forward(self, x, emb, context=None):
        for layer in self:
            x = layer(x, emb)
        return x


class PointwiseStagesUNet(torch.nn.Module):
    """ldm's U-Net block layout (input, middle and output blocks, skips concatenated before each output block) made
    of 1×1 layers: FreeU finds both its stages here (backbone 4× and 2× ``model_channels``), and every output cell
    depends on its own latent cell, the timestep and its row's context alone, so a tiled run equals the untiled one
    exactly unless FreeU (whose statistics span the whole feature map) makes tiles differ."""

    def __init__(self, model_channels=8, context_dim=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        mc = self.model_channels = model_channels
        self.input_blocks = torch.nn.ModuleList(
            [_PointwiseSequential(_PointwiseLayer(a, b)) for a, b in ((4, mc), (mc, 2 * mc), (2 * mc, 4 * mc))])
        self.middle_block = _PointwiseSequential(_PointwiseLayer(4 * mc, 4 * mc))
        self.output_blocks = torch.nn.ModuleList(
            [_PointwiseSequential(_PointwiseLayer(a, b)) for a, b in ((8 * mc, 4 * mc), (6 * mc, 2 * mc), (3 * mc, mc))])
        self.out = torch.nn.Conv2d(mc, 4, 1)
        self.attn2 = torch.nn.Linear(context_dim, 8 * mc)

    def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
        emb = self.attn2(context).mean(1) + 1e-3 * timesteps.view(-1, 1).float()
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], 1), emb)
        return self.out(h)


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion's DDPM schedule (scaled-linear betas 0.00085..0.012 over 1000 steps), float64."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class UNetAsLDM(torch.nn.Module):
    """What k-diffusion's ``CompVisDenoiser`` needs of ldm's LatentDiffusion around a bare U-Net:
    ``alphas_cumprod`` and ``apply_model(x, t, cond)``, ``cond`` the WebUI's dict (``c_crossattn``,
    optional ``c_concat``), SDXL's (``crossattn``, ``vector``) or a plain context tensor."""

    def __init__(self, unet):
        super().__init__()
        self.model = unet
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod().float())

    def apply_model(self, x, t, cond):
        if not isinstance(cond, dict):
            return self.model(x, t, context=cond)
        if "vector" in cond:
            return self.model(x, t, context=cond["crossattn"], y=cond["vector"])
        concat = cond.get("c_concat") or []
        return self.model(torch.cat([x, *concat], 1) if concat else x, t, context=torch.cat(cond["c_crossattn"], 1))


class TinyAutoencoderKL(torch.nn.Module):
    """AutoencoderKL's modules and keys (encoder, decoder, quant_conv, post_quant_conv); small by default,
    ``TinyAutoencoderKL(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2)`` is the SD1.x/SDXL VAE at full size."""

    def __init__(self, ch=32, ch_mult=(1, 2, 2, 2), embed_dim=4, seed=0, num_res_blocks=1):
        super().__init__()
        torch.manual_seed(seed)
        dd = dict(double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3, ch=ch, ch_mult=list(ch_mult),
                  num_res_blocks=num_res_blocks, attn_resolutions=[], dropout=0.0)
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.quant_conv = torch.nn.Conv2d(2 * dd["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, dd["z_channels"], 1)

    def encode(self, x):
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


class HashTextEncoder(torch.nn.Module):
    """Deterministic stand-in for CLIP text conditioning: (B, 77, dim) from word hashes."""

    def __init__(self, dim, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embedding = torch.nn.Embedding(4096, dim)
        self.dim = dim

    def forward(self, prompts):
        rows = []
        for prompt in prompts:
            ids = [int(hashlib.md5(w.encode()).hexdigest(), 16) % 4096 for w in prompt.split()][:75]
            ids = [0] + ids + [1] * (76 - len(ids))
            rows.append(self.embedding(torch.tensor(ids, device=self.embedding.weight.device)))
        return torch.stack(rows) * 0.5


class TinySD(torch.nn.Module):
    """The parts of the WebUI's ``shared.sd_model`` (LatentDiffusion / DiffusionEngine) the pipeline uses."""

    def __init__(self, family="sd1", unet=None, inpainting=False, seed=0, context_dim=None, cond_stage_model=None,
                 parameterization="eps"):
        """``cond_stage_model``: a text encoder to use instead of the word-hash stand-in, e.g. the WebUI's
        CLIP wrapper from ``modules.sd_hijack_clip.build_cond_stage_model`` (its width must be the U-Net's
        context width). ``parameterization``: ``"v"`` for v-prediction models (SD2.x 768-v), which the WebUI
        samples through k-diffusion's ``CompVisVDenoiser``."""
        super().__init__()
        self.family = family
        self.is_sdxl = family == "sdxl"
        self.is_sd2 = family == "sd2"
        self.is_sd1 = family == "sd1"
        unet = unet or tiny_unet(family, in_channels=9 if inpainting else 4, seed=seed, context_dim=context_dim)
        self.model = types.SimpleNamespace(diffusion_model=unet, conditioning_key="hybrid" if inpainting else "crossattn")
        self.diffusion_model = unet  # registers the U-Net as a submodule
        self.first_stage_model = TinyAutoencoderKL(seed=seed)
        ctx = context_dim or {"sd1": 768, "sd2": 1024, "sdxl": 2048}[family]
        self.cond_stage_model = cond_stage_model if cond_stage_model is not None else HashTextEncoder(ctx, seed=seed)
        self.parameterization = parameterization
        self.scale_factor = 0.18215
        self.latent_channels = 4
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod().float())
        self.sd_model_hash = "0123abcd"
        self.sd_checkpoint_info = types.SimpleNamespace(name_for_extra="tiny", short_title="tiny", filename="tiny.safetensors")
        self.eval()

    def get_learned_conditioning(self, prompts):
        c = self.cond_stage_model(list(prompts))
        if self.is_sdxl:
            vector = c.mean(dim=1)[:, :64] if c.shape[-1] >= 64 else torch.nn.functional.pad(c.mean(dim=1), (0, 64 - c.shape[-1]))
            return {"crossattn": c, "vector": vector}
        return c

    def apply_model(self, x, t, cond):
        unet = self.model.diffusion_model
        if self.is_sdxl:
            return unet(x, t, context=cond["crossattn"], y=cond["vector"])
        context = torch.cat(cond["c_crossattn"], 1)
        if self.model.conditioning_key == "hybrid":
            x = torch.cat([x, *cond["c_concat"]], dim=1)
        return unet(x, t, context=context)

    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, posterior):
        return self.scale_factor * posterior.mode()

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)
