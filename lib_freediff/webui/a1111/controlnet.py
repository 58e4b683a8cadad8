"""sd-webui-controlnet beside Any-Size Diffusion's tiled pass, and its U-Net hook after a failed generation.

ControlNet (Mikubill/sd-webui-controlnet, v1.1.4xx) replaces the U-Net's forward for a generation and reads
each unit's control image from its own state, not from the call's arguments: ``param.hint_cond`` (pixels,
1×C×8H×8W) and, in txt2img's hires pass, ``param.hr_hint_cond``, chosen per call by comparing ``8·x.height``
with both (a tie picks the hires one). A tile-sized call would get the whole image's control and fail. So,
around each tiled call, :class:`ControlNetTiles` hands ControlNet per-call copies of its unit parameters that
hold the crops of their control belonging to the call's tiles, repeated in the call's tile-major row layout
(one crop of batch 1 when the call has one tile), and puts the originals back afterwards:

* the control image (pixel crop at 8× the tile's latent box), as ``hint_cond``, ``used_hint_cond`` and, in a
  hires pass, ``hr_hint_cond`` (all one tensor: ControlNet's height test then ties and stays in hires mode);
* VAE latents of the control that some units use (``inpaint_only``, ``colorfix``: ``used_hint_cond_latent``;
  an inpaint unit on an inpainting checkpoint: ``used_hint_inpaint_hijack``), encoded once per pass at full
  size and cropped per tile;
* the unit's effective-region mask, resized once to 8H×8W and cropped;
* T2I-Adapter features, recomputed from the crop (the adapter otherwise keeps the first features it made);
* IP-Adapter's per-layer key/value cache, emptied before and after each call: it is filled at the first call
  and reshaped with every later call's batch, so tile batches of another size would mix samples; and while an
  IP-Adapter unit is on, each call holds one tile (see :meth:`ControlNetTiles.one_tile_per_call`).

Units that cannot be tiled this way are refused before any model work, naming the unit; see
:meth:`ControlNetTiles.check`. Facts from sd-webui-controlnet v1.1.455 (``scripts/hook.py``, ``controlnet.py``,
``adapter.py``, ``ipadapter/plugable_ipadapter.py``); only its objects' attributes are used, nothing is imported.
"""

from __future__ import annotations

import copy
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.nn.functional as F

from lib_freediff.asd.fstd import crops_in_rows
from lib_freediff.errors import FreeDiffError

SCRIPT_TITLE = "controlnet"
# unit types whose control image feeds a ControlNet (its `is_controlnet`) or a T2I-Adapter
SPATIAL_TYPES = {"ControlNet", "ControlLoRA", "InstantID", "ControlNetUnion", "T2I_Adapter"}
# unit types with no spatial input: nothing to crop
TOKEN_TYPES = {"T2I_StyleAdapter", "ReVision", "IPAdapter"}
REFUSED_TYPES = {
    "AttentionInjection": "reference units (reference_only, reference_adain) run a second U-Net pass over the whole "
                          "reference image in every call, which a tile cannot hold",
    "Controlllite": "ControlNet-LLLite keeps its control at the first call's block sizes",
    "SparseCtrl": "SparseCtrl gives each frame its own control image",
}


def find_hook(p):
    """``(script, hook)`` of ControlNet's live U-Net hook in generation ``p``, or None when no unit is active."""
    runner = getattr(p, "scripts", None)
    for script in getattr(runner, "alwayson_scripts", None) or []:
        try:
            title = script.title()
        except Exception:
            continue
        if str(title).lower() != SCRIPT_TITLE:
            continue
        hook = getattr(script, "latest_network", None)
        if hook is not None and getattr(hook, "control_params", None):
            return script, hook
    return None


class FirstPassControl:
    """ControlNet tells the hires pass from the first by the call's height alone (a tie picks the hires control). A
    txt2img first pass of the hires pass's height but another width (Any-Size Diffusion's never-downscale plans crop
    the first pass to the render size along the width) would take the hires control, of another width, and fail as
    cldm's ``h += guided_hint`` does. For the first pass such units' hires control is put aside; :meth:`restore` puts
    it back (before the hires pass, and at the end)."""

    def __init__(self, p):
        self.kept = []
        found = find_hook(p)
        for param in (found[1].control_params if found is not None else ()):
            hint, hr = getattr(param, "hint_cond", None), getattr(param, "hr_hint_cond", None)
            if _is_image(hint) and _is_image(hr) and hint.shape[2] == hr.shape[2] and hint.shape[3] != hr.shape[3]:
                self.kept.append((param, hr))
                param.hr_hint_cond = None

    def restore(self) -> None:
        for param, hires in self.kept:
            param.hr_hint_cond = hires
        self.kept.clear()


def restore_after_failure(p) -> None:
    """Takes ControlNet's hooks off after a generation that raised: ControlNet removes them only in its own
    ``postprocess``, which the WebUI skips then, and the other tab's next generation would run through them.
    Does what that ``postprocess`` does to the U-Net: ``latest_network.restore()`` and the module function
    ``clear_all_secondary_control_models(unet)`` (IP-Adapter, LLLite and reference patches)."""
    runner = getattr(p, "scripts", None)
    for script in getattr(runner, "alwayson_scripts", None) or []:
        try:
            if str(script.title()).lower() != SCRIPT_TITLE:
                continue
            hook = getattr(script, "latest_network", None)
            if hook is None:
                continue
            clear = _module_globals(script).get("clear_all_secondary_control_models")
            unet = getattr(hook, "model", None)
            if callable(clear) and unet is not None:
                clear(unet)
            if callable(getattr(hook, "restore", None)):
                hook.restore()
            script.latest_network = None
        except Exception:
            traceback.print_exc()


def _module_globals(script) -> dict:
    """The namespace of the file that defines the script's class (the WebUI loads script files as anonymous
    modules, so ``sys.modules`` does not have them)."""
    for attr in vars(type(script)).values():
        found = getattr(attr, "__globals__", None)
        if isinstance(found, dict):
            return found
    return {}


def _type_name(param) -> str:
    kind = getattr(param, "control_model_type", None)
    return getattr(kind, "name", str(kind))


def _module_name(param) -> str:
    pre = getattr(param, "preprocessor", None)
    return str(pre.get("name", "")) if isinstance(pre, dict) else ""


def _is_image(t) -> bool:
    return isinstance(t, torch.Tensor) and t.ndim == 4


@dataclass
class _Unit:
    index: int
    param: Any
    kind: str
    image: Optional[torch.Tensor] = None  # the control at 8H×8W (pixels), or None when not spatial
    hires: bool = False  # ControlNet's height test picks hr_hint_cond for this pass
    latent: Optional[torch.Tensor] = None  # VAE latent of the control, 1×4×H×W
    inpaint: Optional[torch.Tensor] = None  # mask + masked latent, 1×5×H×W (inpainting checkpoints)
    mask: Optional[torch.Tensor] = None  # effective-region mask at 8H×8W


class ControlNetTiles:
    """Gives each tiled call the ControlNet control of its tiles (module docstring). Used as the tiler's
    ``tile_context``; :meth:`begin_pass` before a tiled pass, :meth:`close` after it (also on errors)."""

    def __init__(self, p, script, hook, feature: str):
        self.p, self.script, self.hook, self.feature = p, script, hook, feature
        self.units: List[_Unit] = []
        self._size = None

    @classmethod
    def of(cls, p, feature: str) -> Optional["ControlNetTiles"]:
        found = find_hook(p)
        return None if found is None else cls(p, *found, feature)

    # ---- what can be tiled -------------------------------------------------------------------------------------

    def _name(self, index: int, param) -> str:
        units = getattr(self.script, "enabled_units", None) or []
        model = getattr(units[index], "model", None) if index < len(units) else None
        what = ", ".join(x for x in (_module_name(param) and f"module {_module_name(param)}", model and f"model {model}") if x)
        return f"ControlNet unit {index + 1} ({what or _type_name(param)})"

    def check(self) -> None:
        """Refuses (FreeDiffError naming the unit) what the tiled pass cannot give per tile."""
        state = getattr(self.script, "ui_batch_option_state", None) or [None, False]
        if len(state) > 1 and state[1]:
            raise FreeDiffError(f"{self.feature}: ControlNet's batch option 'style align' shares attention across "
                                "the whole batch, which tiles would split; turn it off or turn off tiling", feature=self.feature)
        if len(state) > 0 and isinstance(state[0], str) and state[0].lower().startswith("each controlnet unit"):
            raise FreeDiffError(f"{self.feature}: ControlNet's batch option 'Each ControlNet unit for each image in a "
                                "batch' assigns units by row, which tiles would reorder; use the default option", feature=self.feature)
        for i, param in enumerate(self.hook.control_params):
            kind = _type_name(param)
            if type(getattr(param, "control_model", None)).__name__ == "PlugableSparseCtrlModel":
                kind = "SparseCtrl"
            why = REFUSED_TYPES.get(kind)
            if why is None and kind not in SPATIAL_TYPES | TOKEN_TYPES:
                why = f"its type {kind} is not known to tile"
            hint = getattr(param, "hint_cond", None)
            if why is None and _is_image(hint) and hint.shape[0] != 1:
                why = "it has one control image per frame or image"
            if why is None and kind == "IPAdapter" and getattr(param, "effective_region_mask", None) is not None:
                why = "an IP-Adapter region mask is laid out over the whole image"
            if why is not None:
                raise FreeDiffError(f"{self.feature}: {self._name(i, param)} cannot be used with tiling: {why}. Turn the "
                                    "unit off, or set Tiling to a tile size covering the image", feature=self.feature)

    def one_tile_per_call(self) -> bool:
        """Calls hold one tile while a unit cannot take several: T2I-Adapters in 'ControlNet is more important' mode
        (or pooled) repeat a batch-1 control over the call's rows; IP-Adapter keys its attention state to the call's
        batch, so it gets the layout of its own untiled runs, one image per call, and tile_batch cannot change its
        image (real ControlNet v1.1.455: tile batch 1 and 4 bit-identical)."""
        return any(_type_name(q) == "IPAdapter" or (_type_name(q) == "T2I_Adapter" and (
            getattr(q, "cfg_injection", False) or getattr(q, "global_average_pooling", False)))
            for q in self.hook.control_params)

    # ---- a pass ------------------------------------------------------------------------------------------------

    def begin_pass(self, height: int, width: int) -> None:
        """Picks each unit's control for a latent of ``height × width`` (ControlNet's own rule, at full size)."""
        self._size = (height, width)
        self.units = []
        for i, param in enumerate(self.hook.control_params):
            unit = _Unit(i, param, _type_name(param))
            hint, hr = getattr(param, "hint_cond", None), getattr(param, "hr_hint_cond", None)
            if unit.kind in SPATIAL_TYPES and _is_image(hint):
                image = hint
                if _is_image(hr) and abs(8 * height - hint.shape[2]) >= abs(8 * height - hr.shape[2]):
                    image, unit.hires = hr, True
                if image.shape[-2:] != (8 * height, 8 * width):  # e.g. a hires latent cut to the render size
                    image = F.interpolate(image, size=(8 * height, 8 * width), mode="bilinear", align_corners=False)
                unit.image = image
                mask = getattr(param, "effective_region_mask", None)
                if _is_image(mask):
                    unit.mask = F.interpolate(mask, size=(8 * height, 8 * width), mode="bilinear", align_corners=False)
            self.units.append(unit)

    def _latents(self, unit: _Unit) -> None:
        """Full-size VAE latents of a unit's control, once a pass, for the units whose ControlNet code uses them."""
        encode = getattr(type(self.hook), "call_vae_using_process", None)
        if encode is None or unit.image is None:
            return
        name = _module_name(unit.param)
        if unit.latent is None and ("inpaint_only" in name or "colorfix" in name):
            unit.latent = encode(self.p, unit.image)
        if unit.inpaint is None and self._unet_in_channels() == 9 and unit.image.shape[1] == 4:
            mask = (unit.image[:, 3:4] > 0.5).to(unit.image.dtype)
            unit.inpaint = torch.cat([F.max_pool2d(mask, (8, 8)), encode(self.p, unit.image[:, :3], None, mask=mask)], dim=1)

    @contextmanager
    def __call__(self, boxes, rows: int, height: int, width: int):
        if (height, width) != self._size:
            self.begin_pass(height, width)
        originals = self.hook.control_params
        copies, adapters = [], []
        for unit in self.units:
            param = unit.param
            local = copy.copy(param)
            if unit.image is not None:
                hint = crops_in_rows(unit.image, boxes, rows, 8)
                local._hint_cond = hint
                local.used_hint_cond = hint
                if unit.hires:
                    local.hr_hint_cond = hint
                self._latents(unit)
                local.used_hint_cond_latent = None if unit.latent is None else \
                    crops_in_rows(unit.latent, boxes, rows, single_as_is=False)
                local.used_hint_inpaint_hijack = None if unit.inpaint is None else \
                    crops_in_rows(unit.inpaint, boxes, rows, single_as_is=False)
                if unit.mask is not None:
                    local.effective_region_mask = crops_in_rows(unit.mask, boxes, rows, 8)
            if unit.kind == "T2I_Adapter":
                model = param.control_model
                adapters.append((model, model.control, getattr(model, "hint_cond", None)))
                model.control = None  # recompute from this call's crop
            self._clear_ip_cache(param)
            copies.append(local)
        self.hook.control_params = copies
        try:
            yield
        finally:
            self.hook.control_params = originals
            for param, local in zip(originals, copies):
                if getattr(param, "vision_hint_count", None) is None and getattr(local, "vision_hint_count", None) is not None:
                    param.vision_hint_count = local.vision_hint_count  # ReVision's noise, drawn once, shared by all tiles
                self._clear_ip_cache(param)
            for model, control, hint in adapters:
                model.control, model.hint_cond = control, hint

    def _unet_in_channels(self) -> int:
        try:
            return int(self.p.sd_model.model.diffusion_model.input_blocks[0][0].in_channels)
        except (AttributeError, IndexError, TypeError):
            return 4

    @staticmethod
    def _clear_ip_cache(param) -> None:
        if _type_name(param) == "IPAdapter" and isinstance(getattr(param.control_model, "cache", None), dict):
            param.control_model.cache = {}

    def close(self) -> None:
        for param in getattr(self.hook, "control_params", None) or []:
            self._clear_ip_cache(param)
        self.units = []
