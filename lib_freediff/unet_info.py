"""Facts about an ldm/sgm ``UNetModel`` read off its modules (works for SD1.x, SD2.x and SDXL)."""

from __future__ import annotations

import torch

FAMILIES = ("sd1", "sd2", "sdxl")


def block_out_channels(block: torch.nn.Module) -> int:
    """Channels a U-Net block (TimestepEmbedSequential) outputs: the last layer that states them."""
    for layer in reversed(list(block.children()) or [block]):
        out = getattr(layer, "out_channels", None)
        if isinstance(out, int):
            return out
    raise ValueError(f"cannot tell the output channels of {type(block).__name__}")


def skip_channels(unet: torch.nn.Module) -> list[int]:
    """Channels of the skip feature each output block receives (output block i pops input block −1−i)."""
    pushed = [block_out_channels(b) for b in unet.input_blocks]
    return pushed[::-1][: len(unet.output_blocks)]


def model_channels(unet: torch.nn.Module) -> int:
    mc = getattr(unet, "model_channels", None)
    if isinstance(mc, int):
        return mc
    return block_out_channels(unet.input_blocks[0])


def context_dim(unet: torch.nn.Module) -> int | None:
    """Width of the cross-attention context (768 SD1.x, 1024 SD2.x, 2048 SDXL), from the first attn2."""
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k") and isinstance(module, torch.nn.Linear):
            return module.in_features
    return None


def model_family(unet: torch.nn.Module) -> str | None:
    """"sd1", "sd2" or "sdxl" judged by context width and the SDXL class embedding; None if unknown."""
    ctx = context_dim(unet)
    if ctx == 2048 or (getattr(unet, "label_emb", None) is not None and ctx not in (768, 1024)):
        return "sdxl"
    if ctx == 1024:
        return "sd2"
    if ctx == 768:
        return "sd1"
    return None
