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
        # torch's Linear, or Forge's operations Linear (a Module of its own with the same in_features)
        if name.endswith("attn2.to_k") and isinstance(getattr(module, "in_features", None), int):
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


def family_from_shapes(shapes) -> str | None:
    """A checkpoint's family from its tensor names and shapes (``{name: shape}``), as a single-file checkpoint has them:
    "flux" and "sd3" (transformers, no U-Net) by their blocks, else the U-Net's cross-attention width (768 SD1.x, 1024
    SD2.x, 2048 SDXL, 1280 the SDXL refiner); None when it cannot tell."""
    names = list(shapes)
    if any("double_blocks." in n for n in names):
        return "flux"
    if any("joint_blocks." in n for n in names):
        return "sd3"
    for name in names:
        if name.endswith("attn2.to_k.weight") and len(shapes[name]) == 2:
            return {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl"}.get(int(shapes[name][1]))
    return None


def checkpoint_family(path: str) -> str | None:
    """The family of a ``.safetensors`` checkpoint read from its header (no weights loaded); None for other formats,
    unreadable files, or when the names do not tell."""
    if not str(path).lower().endswith(".safetensors"):
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return family_from_shapes({name: f.get_slice(name).get_shape() for name in f.keys()})
    except Exception:
        return None
