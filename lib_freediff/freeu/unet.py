"""FreeU attached to a U-Net through forward pre-hooks on its output blocks.

Each output block receives ``cat([backbone, skip])``; a pre-hook rewrites that tensor before the
block runs. No global function is patched, so FreeU keeps working when another extension (e.g.
ControlNet) replaces ``UNetModel.forward`` but still calls the output blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, NamedTuple, Optional, Tuple

import torch

from lib_freediff.freeu.ops import fourier_filter, scale_backbone_
from lib_freediff.freeu.tiled import TileStats
from lib_freediff.unet_info import model_channels, skip_channels


class FreeUStage(NamedTuple):
    block_index: int
    backbone_channels: int
    skip_channels: int
    stage: int  # 1 → (b1, s1), 2 → (b2, s2)


@dataclass(frozen=True)
class FreeUFactors:
    version: int
    b1: float
    b2: float
    s1: float
    s2: float
    threshold: int = 1

    def for_stage(self, stage: int) -> tuple[float, float]:
        return (self.b1, self.s1) if stage == 1 else (self.b2, self.s2)


def find_stages(unet: torch.nn.Module) -> list[FreeUStage]:
    """Output blocks FreeU acts on: backbone 4×model_channels → stage 1, 2× → stage 2 (as the official code)."""
    mc = model_channels(unet)
    stages = []
    for index, (block, skip) in enumerate(zip(unet.output_blocks, skip_channels(unet))):
        first = next(iter(block.children()), None)
        total = getattr(first, "channels", None)
        if not isinstance(total, int):
            continue
        backbone = total - skip
        stage = {4 * mc: 1, 2 * mc: 2}.get(backbone)
        if stage is not None:
            stages.append(FreeUStage(index, backbone, skip, stage))
    return stages


def apply_stage(h: torch.Tensor, hsp: torch.Tensor, b: float, s: float, factors: FreeUFactors,
                tiles: Optional[TileStats] = None, block: Hashable = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """FreeU on one decoder stage: the backbone ``h`` scaled in place, the skip ``hsp`` filtered; returns both.

    The host-neutral core of a stage hook (A1111: a forward pre-hook on the output block; Forge: an output-block
    patch ``fn(h, hsp, transformer_options)``). ``tiles``: the tiled pass's :class:`TileStats`; inside a tiled
    U-Net call the tiles then share the whole latent's statistics, keyed by ``block`` (any hashable that names
    the output block); elsewhere, and without it, this is plain FreeU.
    """
    if tiles is None:
        if b != 1:
            scale_backbone_(h, b, factors.version)
        if s != 1:
            hsp = fourier_filter(hsp, factors.threshold, s)
    else:
        if b != 1:
            tiles.scale_backbone_(h, b, factors.version, block)
        if s != 1:
            hsp = tiles.fourier_filter(hsp, factors.threshold, s, block)
    return h, hsp


class _StageHook:
    """Pre-hook of one output block: scales the backbone part and filters the skip part of its input."""

    def __init__(self, patch: "FreeUPatch", stage: FreeUStage):
        self.patch = patch
        self.stage = stage

    def __call__(self, module, args):
        if not self.patch.active or not args:
            return None
        x = args[0]
        cb = self.stage.backbone_channels
        if x.dim() != 4 or x.shape[1] != cb + self.stage.skip_channels:
            return None
        factors = self.patch.factors
        b, s = factors.for_stage(self.stage.stage)
        # the cat result belongs to this forward alone, so it can be rewritten in place when no grad is kept
        out = x.clone() if x.requires_grad else x
        _, skip = apply_stage(out[:, :cb], out[:, cb:], b, s, factors, self.patch.tiles, self.stage.block_index)
        if s != 1:
            out[:, cb:] = skip
        return None if out is x else (out, *args[1:])


class FreeUPatch:
    """FreeU on one U-Net; attach() adds the hooks, remove() takes every one of them off again."""

    def __init__(self, unet: torch.nn.Module, factors: FreeUFactors, tiles: Optional[TileStats] = None):
        self.unet = unet
        self.factors = factors
        self.tiles = tiles  # consulted inside a tiled pass's U-Net calls (lib_freediff.freeu.tiled)
        self.stages = find_stages(unet)
        self.active = True
        self._handles: list = []

    def attach(self) -> "FreeUPatch":
        if not self._handles:
            for stage in self.stages:
                block = self.unet.output_blocks[stage.block_index]
                self._handles.append(block.register_forward_pre_hook(_StageHook(self, stage)))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.remove()


def attached_hook_count(unet: torch.nn.Module) -> int:
    """FreeU hooks currently on ``unet`` (for leak checks)."""
    return sum(isinstance(h, _StageHook) for block in unet.output_blocks for h in block._forward_pre_hooks.values())


def remove_all_hooks(unet: torch.nn.Module) -> int:
    """Removes FreeU hooks left by any patch (e.g. one abandoned by a crashed generation)."""
    removed = 0
    for block in unet.output_blocks:
        for key, hook in list(block._forward_pre_hooks.items()):
            if isinstance(hook, _StageHook):
                del block._forward_pre_hooks[key]
                removed += 1
    return removed
