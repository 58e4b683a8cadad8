"""Forge's built-in ControlNet (``extensions-builtin/sd_forge_controlnet``) beside Any-Size Diffusion's tiled pass.

Forge puts each spatial unit on the U-Net patcher as a ``ControlBase`` in a linked list (``previous_controlnet``)
and, before each U-Net call, computes the list's control for the call's whole latent from ``cond_hint``: the unit's
control image (``cond_hint_original``) resized to 8H×8W by Forge's ``adaptive_resize``. A tile call needs the
control of its tiles: :class:`ControlCrops` gives each unit, for the length of one ``get_control``, the crops of its
full-size hint (Forge's own resize, once per pass and size) and of its region mask in the call's row layout, and
the call's transformer options (cond/uncond per row chunk, read by the 'ControlNet / prompt is more important'
weighting). Non-spatial units need nothing per tile: IP-Adapter builds its tokens per row chunk from the
transformer options, Revision and the inpaint modes act on the whole latent outside the U-Net call.

Units that cannot be tiled are refused before any model work, naming the unit (:meth:`ForgeControlNetTiles.check`).
Facts from Forge main (``backend/patcher/controlnet.py``, ``modules_forge/supported_controlnet.py``,
``extensions-builtin/sd_forge_controlnet/scripts/controlnet.py``); only its objects' attributes are used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lib_freediff.asd.fstd import crops_in_rows
from lib_freediff.errors import FreeDiffError

SCRIPT_TITLE = "ControlNet"
# control models (``params.model``) by class: what tiling does with them
SPATIAL_MODELS = {"ControlNetPatcher"}
TOKEN_MODELS = {"IPAdapterPatcher"}
REFUSED_MODELS = {
    "ControlLLLitePatcher": "ControlNet-LLLite keeps its control at the whole image's block sizes",
    "FooocusInpaintPatcher": "Fooocus inpaint patches the U-Net's first block with features of the whole image",
}
# preprocessors that need no control model, by name prefix: whole-latent ones are fine, reference ones are not
WHOLE_LATENT_PREPROCESSORS = ("revision", "inpaint")
REFUSED_PREPROCESSORS = {
    "reference": "reference units run the U-Net over the whole reference image inside every call, which a tile "
                 "cannot hold",
}
# control classes (``params.model.model_patcher``) that are cropped per tile
CROPPED_CONTROLS = {"ControlNet", "ControlLora"}


class ControlCrops:
    """Each spatial unit's control for a call over some tiles."""

    def __init__(self):
        self._full: dict = {}

    def _whole(self, node, height: int, width: int):
        """The unit's hint and region mask at 8H×8W, as Forge would use them for an untiled call of that latent."""
        key = (id(node), height, width)
        found = self._full.get(key)
        if found is None or found[0] is not node:
            from backend.misc.image_resize import adaptive_resize

            dtype = getattr(node, "manual_cast_dtype", None) or getattr(getattr(node, "control_model", None), "dtype", torch.float32)
            hint = adaptive_resize(node.cond_hint_original, 8 * width, 8 * height, "nearest-exact", "center").to(dtype)
            mask = getattr(node, "advanced_mask_weighting", None)
            if isinstance(mask, torch.Tensor):
                mask = F.interpolate(mask.float(), size=(8 * height, 8 * width), mode="bilinear")
            found = self._full[key] = (node, hint, mask)
        return found[1], found[2]

    def control(self, head, x, timestep, c, batched: int, boxes, height: int, width: int):
        """``head.get_control`` for a call over ``boxes`` of a ``height × width`` latent."""
        rows = x.shape[0] // len(boxes)
        saved = []
        node = head
        while node is not None:
            saved.append((node, node.cond_hint, node.transformer_options, getattr(node, "advanced_mask_weighting", None)))
            if type(node).__name__ in CROPPED_CONTROLS:
                hint, mask = self._whole(node, height, width)
                node.cond_hint = crops_in_rows(hint, boxes, rows, 8)
                if mask is not None:
                    node.advanced_mask_weighting = crops_in_rows(mask, boxes, rows, 8, single_as_is=False)
            node.transformer_options = c["transformer_options"]
            node = node.previous_controlnet
        try:
            return head.get_control(x, timestep, c, batched)
        finally:
            for node, hint, options, mask in saved:
                node.cond_hint, node.transformer_options = hint, options
                if mask is not None:
                    node.advanced_mask_weighting = mask


class ForgeControlNetTiles:
    """The enabled units of Forge's ControlNet in generation ``p``, checked for the tiled pass."""

    def __init__(self, units, feature: str):
        self.units, self.feature = units, feature

    @classmethod
    def of(cls, p, feature: str):
        runner = getattr(p, "scripts", None)
        for script in getattr(runner, "alwayson_scripts", None) or []:
            try:
                if script.title() != SCRIPT_TITLE:
                    continue
            except Exception:
                continue
            params = getattr(script, "current_params", None) or {}
            if not params:
                return None
            enabled = script.get_enabled_units(p.script_args[script.args_from:script.args_to])
            return cls([(i, unit, params[i]) for i, unit in enumerate(enabled) if i in params], feature)
        return None

    @staticmethod
    def _name(index: int, unit, params) -> str:
        module = getattr(params.preprocessor, "name", None) or getattr(unit, "module", "")
        model = getattr(unit, "model", None)
        what = ", ".join(x for x in (module and f"module {module}", model and model != "None" and f"model {model}") if x)
        return f"ControlNet unit {index} ({what or type(params.model).__name__})"

    @staticmethod
    def _why_not(params) -> str | None:
        kind = type(params.model).__name__
        module = str(getattr(params.preprocessor, "name", "") or "").lower()
        for prefix, why in REFUSED_PREPROCESSORS.items():
            if module.startswith(prefix):
                return why
        if kind in REFUSED_MODELS:
            return REFUSED_MODELS[kind]
        if kind in SPATIAL_MODELS:
            control = type(getattr(params.model, "model_patcher", None)).__name__
            if control not in CROPPED_CONTROLS:
                return f"its control type {control} (T2I-Adapter) keeps features of the whole image"
            return None
        if kind in TOKEN_MODELS:
            if getattr(params, "control_mask", None) is not None:
                return "an IP-Adapter region mask is laid out over the whole image"
            return None
        if kind == "ControlModelPatcher" and module.startswith(WHOLE_LATENT_PREPROCESSORS):
            return None
        return f"its type {kind} is not known to tile"

    def check(self) -> None:
        """Refuses (FreeDiffError naming the unit) what the tiled pass cannot give per tile."""
        for index, unit, params in self.units:
            why = self._why_not(params)
            if why is not None:
                raise FreeDiffError(f"{self.feature}: {self._name(index, unit, params)} cannot be used with tiling: {why}. "
                                    "Turn the unit off, or set the tile size to cover the image", feature=self.feature)

    def one_tile_per_call(self) -> bool:
        return False  # IP-Adapter builds its tokens per row chunk: any tile batch gives the same image

    def close(self) -> None:
        pass
