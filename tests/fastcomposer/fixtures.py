"""Builders for the FastComposer tests: an offline CLIP tokenizer and a tiny checkpoint in the
official release layout (random weights, seeded).

Layout written (as ``FastComposerModel.state_dict()`` of the reference, strict-loaded by its demo):
``text_encoder.{embeddings,encoder,final_layer_norm}.*`` (no ``text_model.``), ``image_encoder.vision_model.*``,
``image_encoder.visual_projection.weight``, ``vae.*`` and ``unet.*`` (diffusers), ``postfuse_module.*``;
``position_ids`` buffers included, the text encoder and VAE stored in bfloat16 (mixed, like the release).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from typing import Dict

import torch

# Tiny sizes shared by the tests.
EMBED_DIM = 32          # text width D (SD1.5: 768)
VISION_HIDDEN = 64      # ViT width (head count inferred as 64 // 64 = 1)
UNET_CHANNELS = (32, 64, 64)
CROSS_ATTN_HEADS = 8


def build_clip_tokenizer(cache_dir: str):
    """transformers ``CLIPTokenizer`` rebuilt from clip-anytorch's BPE file (same ids as CLIP's)."""
    import importlib.util

    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    # clip-anytorch ships CLIP's BPE merges; locate the file without importing clip (which pulls torchvision)
    spec = importlib.util.find_spec("clip")
    bpe = os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")

    vocab_file = os.path.join(cache_dir, "vocab.json")
    merges_file = os.path.join(cache_dir, "merges.txt")
    if not (os.path.exists(vocab_file) and os.path.exists(merges_file)):
        lines = gzip.open(bpe).read().decode("utf-8").split("\n")
        merges = lines[1:49152 - 256 - 2 + 1]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m.split()) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        os.makedirs(cache_dir, exist_ok=True)
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(vocab_file, merges_file, pad_token="<|endoftext|>")


def tiny_vision_config():
    from lib_freediff.fastcomposer.model import vision_config

    return vision_config(hidden_size=VISION_HIDDEN, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=VISION_HIDDEN // 64, image_size=224, patch_size=32,
                         projection_dim=EMBED_DIM)


def tiny_text_model():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=EMBED_DIM, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu")
    return CLIPTextModel(cfg).eval()


def trained_looking_text_model(seed: int = 1):
    """``tiny_text_model`` whose layer norms have trained-looking affine parameters (with the default ones every
    token's output has mean 0, and the WebUI's emphasis mean-restore would divide 0 by 0); no gradients."""
    torch.manual_seed(seed)
    text = tiny_text_model()
    with torch.no_grad():
        for module in text.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
    return text.requires_grad_(False)


def webui_text_encoder(tokenizer):
    """``sd_model.cond_stage_model`` as the WebUI has it (the stand-in's ``sd_hijack_clip`` wrapper) over
    ``trained_looking_text_model``, of the post-fuse width."""
    from modules.sd_hijack_clip import build_cond_stage_model

    return build_cond_stage_model(tokenizer, trained_looking_text_model())


def tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=UNET_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=EMBED_DIM, attention_head_dim=CROSS_ATTN_HEADS, norm_num_groups=32,
    ).eval()


def ldm_unet_for_tiny():
    """ldm ``UNetModel`` with the tiny U-Net's SD1.5 topology (as the WebUI's v1-inference.yaml)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(image_size=8, in_channels=4, out_channels=4, model_channels=UNET_CHANNELS[0],
                     attention_resolutions=[1, 2], num_res_blocks=2, channel_mult=(1, 2, 2),
                     num_heads=CROSS_ATTN_HEADS, use_spatial_transformer=True, transformer_depth=1,
                     context_dim=EMBED_DIM, use_checkpoint=False, legacy=False,
                     use_linear_in_transformer=False).eval()


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                         block_out_channels=(32, 64),
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32).eval()


def ldm_vae_parts_for_tiny():
    """ldm Encoder/Decoder (+ quant convs) with the tiny VAE's shape (as in v1-inference.yaml)."""
    from ldm.modules.diffusionmodules.model import Decoder, Encoder

    dd = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=(1, 2),
              num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    enc, dec = Encoder(**dd), Decoder(**dd)
    quant = torch.nn.Conv2d(8, 8, 1)
    post = torch.nn.Conv2d(4, 4, 1)
    return torch.nn.ModuleDict({"encoder": enc, "decoder": dec, "quant_conv": quant, "post_quant_conv": post}).eval()


@dataclass
class TinyRelease:
    state_dict: Dict[str, torch.Tensor]
    bin_path: str
    st_path: str
    models: dict


def build_tiny_release(seed: int = 0) -> tuple:
    """(official-layout state dict, {name: module}) with seeded random weights."""
    from transformers import CLIPVisionModelWithProjection

    from lib_freediff.fastcomposer.model import PostfuseModule

    torch.manual_seed(seed)
    text = tiny_text_model()
    vision = CLIPVisionModelWithProjection(tiny_vision_config()).eval()
    postfuse = PostfuseModule(EMBED_DIM).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for mod in postfuse.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.normal_(1.0, 0.2)
                mod.bias.normal_(0.0, 0.2)
    unet = tiny_unet()
    vae = tiny_vae()
    with torch.no_grad():  # diffusers zero-inits some layers; give every weight a value
        for m in (unet, vae):
            for name, p in m.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    p.normal_(1.0, 0.1)
                elif name.endswith("bias") or p.abs().sum() == 0:
                    p.normal_(0.0, 0.05)

    sd = {}
    for k, v in text.state_dict().items():   # FastComposerTextEncoder: no "text_model." level
        sd["text_encoder." + k[len("text_model."):]] = v.to(torch.bfloat16) if v.is_floating_point() else v
    for k, v in vision.state_dict().items():
        sd["image_encoder." + k] = v
    for k, v in postfuse.state_dict().items():
        sd["postfuse_module." + k] = v
    for k, v in unet.state_dict().items():
        sd["unet." + k] = v
    for k, v in vae.state_dict().items():
        sd["vae." + k] = v.to(torch.bfloat16)
    sd = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    return sd, {"text": text, "vision": vision, "postfuse": postfuse, "unet": unet, "vae": vae}


def write_tiny_release(directory: str, seed: int = 0) -> TinyRelease:
    from lib_freediff.fastcomposer.loader import convert_bin_to_safetensors

    sd, models = build_tiny_release(seed)
    os.makedirs(directory, exist_ok=True)
    bin_path = os.path.join(directory, "pytorch_model.bin")
    torch.save(sd, bin_path)
    st_path = os.path.join(directory, "fastcomposer.safetensors")
    convert_bin_to_safetensors(bin_path, st_path)
    return TinyRelease(sd, bin_path, st_path, models)
