"""A stand-in for Forge's built-in ControlNet (``extensions-builtin/sd_forge_controlnet``), as small as the tests need
and true to how it hooks in (facts of its ``scripts/controlnet.py``, ``modules_forge/supported_controlnet.py``,
``sd_forge_ipadapter`` and ``backend/patcher/controlnet.py``):

* one Script per tab titled "ControlNet"; ``process`` keeps, per enabled unit, ``current_params[i]`` with its
  preprocessor (``.name``), its control model (a ``ControlNetPatcher`` holding a ``ControlNet``, an
  ``IPAdapterPatcher``, or a ``ControlModelPatcher`` for preprocessors that need no model), and its control image at
  the first pass's size (``control_cond``) and at the hires size (``control_cond_for_hr_fix``), one row per image;
* ``process_before_every_sampling`` puts each unit on a clone of the pass's U-Net patcher: a ControlNet via
  ``apply_controlnet_advanced`` (the linked list Forge's sampling function asks for each call's control), with the
  'ControlNet is more important' weighting read from the call's ``cond_mark``; an IP-Adapter as a patch that adds
  image tokens per row chunk chosen by ``transformer_options["cond_or_uncond"]`` (as Forge's IP-Adapter attention
  patch builds its keys per chunk: rows that are not laid out in those chunks get the wrong tokens); a reference unit as an output-block
  patch over the whole latent.

Units are dicts: ``{"image": PIL image or base64, "model": "control" | "ip-adapter" | "reference" | "t2i",
"weight": 1.0, "control_mode": "Balanced" | "ControlNet is more important", "mask": PIL image or None}``; a unit
slot holding None is off.
"""

import types

import gradio as gr
import numpy as np
import torch
import torch.nn.functional as F

from backend.patcher.controlnet import ControlNet, T2IAdapter, apply_controlnet_advanced
from modules import scripts

UNIT_SLOTS = 3


def image_to_cond(image, width, height, rows=1):
    """The unit's image resized to the target, ``rows``×3×h×w in [0, 1] (Forge keeps one row per image)."""
    if isinstance(image, str):
        from modules.api.api import decode_base64_to_image

        image = decode_base64_to_image(image)
    arr = np.asarray(image.convert("RGB").resize((width, height)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].repeat(rows, 1, 1, 1)


class TinyControlModel(torch.nn.Module):
    """cldm's shape of work, as small as can be: the 8×-pooled control added to the projected latent (a control image
    of another size fails there, as cldm's ``h += guided_hint``), carried down to the middle block's size and
    channels; returns the middle block's residual."""

    def __init__(self, mid_channels, levels=3, seed=3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x_in = torch.nn.Parameter(torch.randn(8, 4, generator=g), requires_grad=False)
        self.hint_in = torch.nn.Parameter(torch.randn(8, 3, generator=g) * 2.0, requires_grad=False)
        self.out = torch.nn.Parameter(torch.randn(mid_channels, 8, generator=g) * 0.5, requires_grad=False)
        self.levels = levels
        self.dtype = torch.float32

    def forward(self, x, hint, timesteps, context, y=None):
        h = torch.einsum("oc,bchw->bohw", self.x_in, x[:, :4]) + torch.einsum("oc,bchw->bohw", self.hint_in, F.avg_pool2d(hint * 2 - 1, 8))
        for _ in range(self.levels):
            h = F.avg_pool2d(h, 2, ceil_mode=True)
        return [torch.einsum("oc,bchw->bohw", self.out, h)]


class ControlModelPatcher:
    def __init__(self, model_patcher=None):
        self.model_patcher = model_patcher
        self.strength, self.start_percent, self.end_percent = 1.0, 0.0, 1.0
        self.positive_advanced_weighting = self.negative_advanced_weighting = None
        self.advanced_mask_weighting = None

    def process_before_every_sampling(self, process, cond, mask, *args, **kwargs):
        return


class ControlNetPatcher(ControlModelPatcher):
    def process_before_every_sampling(self, process, cond, mask, *args, **kwargs):
        unet = process.sd_model.forge_objects.unet
        process.sd_model.forge_objects.unet = apply_controlnet_advanced(
            unet=unet, controlnet=self.model_patcher, image_bchw=cond, strength=self.strength,
            start_percent=self.start_percent, end_percent=self.end_percent,
            positive_advanced_weighting=self.positive_advanced_weighting,
            negative_advanced_weighting=self.negative_advanced_weighting, advanced_mask_weighting=mask)


class IPAdapterTokens:
    """Image tokens added at each output block, per row chunk: cond chunks get the image's, uncond chunks none."""

    def __init__(self, image, weight, seed=5):
        g = torch.Generator().manual_seed(seed)
        colour = image_to_cond(image, 8, 8).mean((2, 3))[0]
        self.tokens = (torch.randn(3, generator=g) * colour).float()
        self.weight = weight

    def __call__(self, h, hsp, transformer_options):
        chunks = transformer_options["cond_or_uncond"]
        if h.shape[0] % len(chunks):
            raise RuntimeError(f"shape '[{len(chunks)}, -1, {h.shape[1]}]' is invalid for input of size {h.numel()}")
        per_chunk = h.shape[0] // len(chunks)
        scale = torch.tensor([1.0 - c for c in chunks for _ in range(per_chunk)], dtype=h.dtype)
        # a pattern over the features (a constant would vanish in the next block's GroupNorm), cond rows only
        ys, xs = torch.meshgrid(torch.arange(h.shape[2]), torch.arange(h.shape[3]), indexing="ij")
        pattern = torch.sin(0.7 * ys + 1.3 * xs).to(h.dtype)
        return h + self.weight * self.tokens.sum() * scale[:, None, None, None] * pattern, hsp

    def __deepcopy__(self, memo):
        return self


class IPAdapterPatcher(ControlModelPatcher):
    def process_before_every_sampling(self, process, cond, mask, *args, **kwargs):
        unet = process.sd_model.forge_objects.unet.clone()
        unet.set_model_output_block_patch(IPAdapterTokens(kwargs["unit"].image, self.strength))
        process.sd_model.forge_objects.unet = unet


class ReferencePatcher(ControlModelPatcher):
    """reference_only's place: a patch that looks at the whole latent of the call."""

    def process_before_every_sampling(self, process, cond, mask, *args, **kwargs):
        unet = process.sd_model.forge_objects.unet.clone()
        unet.set_model_output_block_patch(lambda h, hsp, to: (h + 0.01 * h.mean(), hsp))
        process.sd_model.forge_objects.unet = unet


class CachedParameters:
    def __init__(self, preprocessor, model):
        self.preprocessor = types.SimpleNamespace(name=preprocessor)
        self.model = model
        self.control_cond = self.control_cond_for_hr_fix = None
        self.control_mask = self.control_mask_for_hr_fix = None


class ControlNetForForgeScript(scripts.Script):
    sorting_priority = 10

    def __init__(self):
        self.current_params = {}

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.State(None) for _ in range(UNIT_SLOTS)]

    def get_enabled_units(self, units):
        return [types.SimpleNamespace(model=u.get("model", "control"), module=u.get("module", "None"),
                                      **{k: v for k, v in u.items() if k not in ("model", "module")})
                for u in units if u]

    def process(self, p, *args, **kwargs):
        units = args
        self.current_params = {}
        w, h = p.width // 8 * 8, p.height // 8 * 8
        hr = (w, h)
        if getattr(p, "enable_hr", False):
            hr = ((p.hr_resize_x or int(p.width * p.hr_scale)) // 8 * 8, (p.hr_resize_y or int(p.height * p.hr_scale)) // 8 * 8)
        mid = 4 * p.sd_model.forge_objects.unet.model.diffusion_model.model_channels
        for i, unit in enumerate(self.get_enabled_units(units)):
            if unit.model == "ip-adapter":
                params = CachedParameters("CLIP-ViT-H (IPAdapter)", IPAdapterPatcher())
            elif unit.model == "reference":
                params = CachedParameters("reference_only", ReferencePatcher())
            else:
                control = T2IAdapter() if unit.model == "t2i" else ControlNet(TinyControlModel(mid))
                params = CachedParameters(getattr(unit, "module", "None"), ControlNetPatcher(control))
                params.control_cond = image_to_cond(unit.image, w, h, p.batch_size)
                params.control_cond_for_hr_fix = image_to_cond(unit.image, *hr, p.batch_size)
            if getattr(unit, "mask", None) is not None:
                params.control_mask = image_to_cond(unit.mask, w, h)[:, :1]
                params.control_mask_for_hr_fix = image_to_cond(unit.mask, *hr)[:, :1]
            self.current_params[i] = params

    def process_before_every_sampling(self, p, *args, **kwargs):
        hr = getattr(p, "is_hr_pass", False)
        for i, unit in enumerate(self.get_enabled_units(args)):
            params = self.current_params[i]
            params.model.strength = float(getattr(unit, "weight", 1.0))
            if getattr(unit, "control_mode", "Balanced") == "ControlNet is more important":
                params.model.positive_advanced_weighting = {"middle": [1.0]}
                params.model.negative_advanced_weighting = {"middle": [0.0]}
            cond = params.control_cond_for_hr_fix if hr else params.control_cond
            mask = params.control_mask_for_hr_fix if hr else params.control_mask
            params.model.process_before_every_sampling(p, cond, mask, unit=unit, params=params)

    def postprocess(self, p, processed, *units):
        self.current_params = {}
