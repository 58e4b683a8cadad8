"""FastComposer's inference-time modules: the CLIP image encoder and the post-fuse MLP.

Parameter names follow the official release checkpoint (``image_encoder.*``, ``postfuse_module.*``),
so ``FastComposerModel.state_dict()`` has the same keys as that part of ``pytorch_model.bin``
(less the ``position_ids`` buffers, which are rebuilt, not loaded).

Fusion (paper §3.2, reference ``FastComposerPostfuseModule.fuse_fn``), for a subject token's text
embedding ``t`` (D) and its subject image embedding ``e`` (D)::

    MLP(x) = fc2(GELU(fc1(LayerNorm(x))))
    t1 = MLP1([t ; e]) + t          # 2D -> D -> D
    t2 = MLP2(t1) + t1              # D -> D -> D
    out = LayerNorm(t2)

Only the subject tokens change; every other token of the conditioning is left as it is.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParamError

FEATURE = "FastComposer"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The encoder FastComposer was trained with: OpenAI CLIP ViT-L/14 (vision tower + projection).
VIT_L14 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


class MLP(nn.Module):
    """``fc2(GELU(fc1(LayerNorm(x))))``, plus ``x`` when ``use_residual``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, use_residual: bool = True):
        super().__init__()
        if use_residual and in_dim != out_dim:
            raise ValueError("a residual MLP needs in_dim == out_dim")
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act_fn = nn.GELU()
        self.use_residual = use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return y + x if self.use_residual else y


class PostfuseModule(nn.Module):
    """Fuses a subject's image embedding into its noun's text embedding (both ``embed_dim``)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.mlp1 = MLP(embed_dim * 2, embed_dim, embed_dim, use_residual=False)
        self.mlp2 = MLP(embed_dim, embed_dim, embed_dim, use_residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, text_embeds: torch.Tensor, subject_embeds: torch.Tensor) -> torch.Tensor:
        """``text_embeds`` and ``subject_embeds`` of the same shape ``(..., D)`` → fused ``(..., D)``."""
        t1 = self.mlp1(torch.cat([text_embeds, subject_embeds], dim=-1)) + text_embeds
        t2 = self.mlp2(t1)  # residual inside
        return self.layer_norm(t2)


def vision_config(**overrides):
    """A transformers ``CLIPVisionConfig``: ViT-L/14 unless overridden."""
    from transformers import CLIPVisionConfig

    kw = dict(VIT_L14)
    kw.update(overrides)
    return CLIPVisionConfig(**kw)


def build_image_encoder(config=None):
    from transformers import CLIPVisionModelWithProjection

    enc = CLIPVisionModelWithProjection(config if config is not None else vision_config())
    enc.eval()
    return enc


class FastComposerModel(nn.Module):
    """Image encoder + post-fuse module (the parts of FastComposer that the WebUI lacks).

    The U-Net, text encoder and VAE of the release are ordinary SD1.5 parts: ``convert.py`` writes them
    as a WebUI checkpoint, and the WebUI runs them.
    """

    def __init__(self, image_encoder: nn.Module, postfuse_module: PostfuseModule):
        super().__init__()
        self.image_encoder = image_encoder
        self.postfuse_module = postfuse_module
        self.eval()
        self.requires_grad_(False)

    @classmethod
    def from_config(cls, vision_cfg=None, embed_dim: int = 768) -> "FastComposerModel":
        return cls(build_image_encoder(vision_cfg), PostfuseModule(embed_dim))

    @property
    def embed_dim(self) -> int:
        return self.postfuse_module.embed_dim

    @property
    def image_size(self) -> int:
        return int(self.image_encoder.config.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @torch.no_grad()
    def encode_subjects(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised images ``(n, 3, H, W)`` → subject embeddings ``(n, D)``.

        Images of another size than the encoder's are resized (bilinear, antialiased, as the reference).
        Returns the projected pooled output in the model's dtype, on the model's device.
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ParamError(FEATURE, "images", f"expected a (n, 3, H, W) tensor, got {tuple(pixel_values.shape)}")
        x = pixel_values.to(device=self.device, dtype=self.dtype)
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False).to(self.dtype)
        out = self.image_encoder(pixel_values=x)
        return out.image_embeds

    @torch.no_grad()
    def fuse(
        self,
        text_embeds: torch.Tensor,
        subject_embeds: torch.Tensor,
        positions: Sequence[Optional[Sequence[Optional[int]]]],
    ) -> torch.Tensor:
        """Augmented conditioning: a copy of ``text_embeds`` (B, T, D) in which, for each batch row b and
        subject j, the token ``positions[b][j]`` is replaced by ``postfuse(text, subject_embeds[j])``.

        ``positions`` has one entry per batch row (None or [] leaves the row unchanged); entry j of a row
        belongs to subject j (None skips it). All other tokens are returned unchanged (bit-exact).
        The result has ``text_embeds``' dtype and device.
        """
        if text_embeds.ndim != 3:
            raise ParamError(FEATURE, "text_embeds", f"expected (B, T, D), got {tuple(text_embeds.shape)}")
        b, t, d = text_embeds.shape
        if d != self.embed_dim:
            raise ParamError(FEATURE, "text_embeds", f"width {d} does not match the model's {self.embed_dim}")
        if len(positions) != b:
            raise ParamError(FEATURE, "positions", f"{len(positions)} rows for a batch of {b}")
        if subject_embeds.ndim != 2 or subject_embeds.shape[1] != d:
            raise ParamError(FEATURE, "subject_embeds", f"expected (n, {d}), got {tuple(subject_embeds.shape)}")

        rows, cols, subj = [], [], []
        for bi, row in enumerate(positions):
            for j, pos in enumerate(row or ()):
                if pos is None:
                    continue
                if j >= subject_embeds.shape[0]:
                    raise ParamError(FEATURE, "images", f"position list names subject {j + 1} but only "
                                     f"{subject_embeds.shape[0]} subject image(s) were given")
                pos = int(pos)
                if not 0 <= pos < t:
                    raise ParamError(FEATURE, "positions", f"token position {pos} is outside 0..{t - 1}")
                rows.append(bi)
                cols.append(pos)
                subj.append(j)

        out = text_embeds.clone()
        if not rows:
            return out
        dev, dt = self.device, self.dtype
        r = torch.tensor(rows, device=text_embeds.device)
        c = torch.tensor(cols, device=text_embeds.device)
        tok = text_embeds[r, c].to(device=dev, dtype=dt)
        sub = subject_embeds[torch.tensor(subj, device=subject_embeds.device)].to(device=dev, dtype=dt)
        fused = self.postfuse_module(tok, sub)
        out[r, c] = fused.to(device=out.device, dtype=out.dtype)
        return out
