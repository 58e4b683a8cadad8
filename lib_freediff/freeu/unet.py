"""FreeU on a U-Net, in the two forms the hosts take it.

* :class:`FreeUPatch`: forward pre-hooks on the output blocks of an ldm/sgm ``UNetModel`` (AUTOMATIC1111). Each
  output block receives ``cat([backbone, skip])``; a pre-hook rewrites that tensor before the block runs. No global
  function is patched, so FreeU keeps working when another extension (e.g. ControlNet) replaces
  ``UNetModel.forward`` but still calls the output blocks.
* :class:`FreeUBlockPatch`: an output-block patch ``fn(h, hsp, transformer_options) -> (h, hsp)`` for a U-Net
  patcher (Forge), called with the backbone and skip before they are concatenated.

Both act on the stages the official code does: backbone of 4× the model's base channels → (b1, s1), 2× → (b2, s2).
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


def stage_of(backbone_channels: int, base_channels: int) -> int | None:
    """FreeU's stage of a decoder input whose backbone has ``backbone_channels`` (None: not a FreeU stage)."""
    return {4 * base_channels: 1, 2 * base_channels: 2}.get(int(backbone_channels))


def apply_stage(h: torch.Tensor, skip: torch.Tensor, factors: FreeUFactors, stage: int,
                tiles: Optional[TileStats] = None, block: Hashable = None) -> torch.Tensor:
    """Scales the backbone ``h`` in place and returns the filtered ``skip`` of one FreeU stage: the body of both
    forms. ``tiles``: the tiled pass's :class:`TileStats`; inside a tiled U-Net call the tiles then share the whole
    latent's statistics, keyed by ``block`` (any hashable that names the output block); elsewhere this is plain FreeU."""
    b, s = factors.for_stage(stage)
    if b != 1:
        if tiles is None:
            scale_backbone_(h, b, factors.version)
        else:
            tiles.scale_backbone_(h, b, factors.version, block)
    if s != 1:
        skip = fourier_filter(skip, factors.threshold, s) if tiles is None else tiles.fourier_filter(skip, factors.threshold, s, block)
    return skip


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
        stage = stage_of(backbone, mc)
        if stage is not None:
            stages.append(FreeUStage(index, backbone, skip, stage))
    return stages


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
        # the cat result belongs to this forward alone, so it can be rewritten in place when no grad is kept
        out = x.clone() if x.requires_grad else x
        skip = out[:, cb:]
        filtered = apply_stage(out[:, :cb], skip, self.patch.factors, self.stage.stage, self.patch.tiles, self.stage.block_index)
        if filtered is not skip:
            skip.copy_(filtered)
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


class FreeUBlockPatch:
    """FreeU as a U-Net patcher's output-block patch (Forge): ``(h, hsp, transformer_options) -> (h, hsp)``.

    ``active`` switches it per step. A patcher deep-copies its options on every clone; the copies must stay this one
    object, so that the switch reaches the clone that samples.
    """

    def __init__(self, factors: FreeUFactors, base_channels: int, tiles: Optional[TileStats] = None):
        self.factors = factors
        self.base_channels = int(base_channels)
        self.tiles = tiles  # consulted inside a tiled pass's U-Net calls (lib_freediff.freeu.tiled)
        self.active = True

    def __call__(self, h, hsp, transformer_options):
        stage = stage_of(h.shape[1], self.base_channels) if self.active and h.dim() == 4 else None
        if stage is None:
            return h, hsp
        return h, apply_stage(h, hsp, self.factors, stage, self.tiles, transformer_options.get("block"))

    def __deepcopy__(self, memo):
        return self


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
