"""A stand-in for sd-webui-controlnet (v1.1.455), as small as the tests need and true to how it hooks in. Loaded
by the harness as another extension's script file. What it reproduces (facts of its scripts/hook.py,
controlnet.py, ipadapter/plugable_ipadapter.py):

* one Script per tab titled "ControlNet"; ``process`` (after every ``before_process``) builds a ``UnetHook`` as
  ``latest_network`` with one ``ControlParams`` per enabled unit, after taking its own previous hook off; only
  its ``postprocess`` (skipped by the WebUI when a generation raises) takes the hook off otherwise, so a failed
  generation leaves it on the U-Net for the other tab's generations;
* ``UnetHook.hook`` replaces the U-Net's ``forward`` (an instance attribute, the original kept as
  ``_original_forward``); the replaced forward reads each unit's control image from its own state, per call:
  ``hint_cond`` (1×3×8h×8w), or ``hr_hint_cond`` in txt2img's hires pass, picked by comparing ``8·x.height`` with
  both (a tie picks hires), and adds the control model's residual, which must match ``x`` exactly (cldm's
  ``h += guided_hint``), before the original forward; a unit's ``effective_region_mask`` scales its residual;
* conds marked as ControlNet marks them: a first token row of +1024 (cond) or −1024 (uncond), read back and
  stripped per call as ``cond_mark``;
* an IP-Adapter unit patches every ``attn2`` module: image tokens chosen per row by ``cond_mark``, projected once
  per layer and cached by layer name (``cache``), then reshaped with the current call's batch — so calls of
  another batch mix samples or fail, as the real one does.

Units are dicts: ``{"image": PIL image, "model": "control" | "ip-adapter" | "reference", "weight": 1.0,
"module": "none", "mask": PIL image or None}``; a unit slot holding None is off.
"""

import types

import gradio as gr
import numpy as np
import torch
import torch.nn.functional as F

from modules import scripts

MARK = 1024.0
UNIT_SLOTS = 3


class ControlModelType:
    """The enum's members the tests use; only ``.name`` is read by other extensions."""

    ControlNet = types.SimpleNamespace(name="ControlNet")
    IPAdapter = types.SimpleNamespace(name="IPAdapter")
    AttentionInjection = types.SimpleNamespace(name="AttentionInjection")


def image_to_hint(image, width, height):
    """The unit's image (PIL, or base64 from the API) resized to the target (ControlNet's 'Just Resize'),
    1×3×h×w in [0, 1]."""
    if isinstance(image, str):
        from modules.api.api import decode_base64_to_image

        image = decode_base64_to_image(image)
    arr = np.asarray(image.convert("RGB").resize((width, height)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


class ControlModel(torch.nn.Module):
    """A control net as small as can be: the 8×-pooled control image through a fixed 1×1 projection to the
    latent's 4 channels (per latent cell, so a pointwise U-Net stays pointwise)."""

    def __init__(self, seed=3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(torch.randn(4, 3, generator=g) * 2.0, requires_grad=False)

    def forward(self, x, hint):
        h, w = x.shape[-2:]
        if hint.shape[-2] // 8 != h or hint.shape[-1] // 8 != w:
            # as cldm's `h += guided_hint` fails for a control image of another size
            raise RuntimeError(f"The size of tensor a ({w}) must match the size of tensor b ({hint.shape[-1] // 8}) "
                               f"at non-singleton dimension 3")
        pooled = F.avg_pool2d(hint * 2 - 1, 8)
        return torch.einsum("oc,bchw->bohw", self.proj.to(pooled.dtype), pooled)


class ControlParams:
    def __init__(self, control_model, hint_cond, weight, model_type, preprocessor, hr_hint_cond=None, mask=None):
        self.control_model = control_model
        self._hint_cond = hint_cond
        self.hr_hint_cond = hr_hint_cond
        self.weight = weight
        self.control_model_type = model_type
        self.preprocessor = {"name": preprocessor}
        self.effective_region_mask = mask
        self.guidance_stopped = False
        self.cfg_injection = False
        self.global_average_pooling = False
        self.used_hint_cond = None
        self.used_hint_cond_latent = None
        self.used_hint_inpaint_hijack = None
        self.vision_hint_count = None

    @property
    def hint_cond(self):
        return self._hint_cond

    @hint_cond.setter
    def hint_cond(self, new):
        self._hint_cond = new
        self.used_hint_cond = None
        self.used_hint_cond_latent = None
        self.used_hint_inpaint_hijack = None


class IPAdapter(torch.nn.Module):
    """Image tokens added to every cross-attention output, their projection cached per layer name."""

    def __init__(self, image, seed=5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        colour = image_to_hint(image, 8, 8).mean((2, 3))[0]  # 3 values
        self.tokens = (torch.randn(4, 3, generator=g) * colour).float()  # cond image tokens; uncond: zeros
        self.seed = seed
        self.cache = {}
        self.weight = 1.0
        self.handles = []
        self.unet = None

    def hook(self, unet):
        self.unet = unet
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                self.handles.append(module.register_forward_hook(self._patch(name)))

    def unhook(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _patch(self, name):
        def hook(module, args, out):
            ip = self.cache.get(name)
            if ip is None:
                mark = self.unet.cond_mark.reshape(-1, 1, 1)
                rows = mark * self.tokens[None]  # B×4×3: cond rows get the image tokens, uncond rows zeros
                g = torch.Generator().manual_seed(self.seed + len(name))
                proj = torch.randn(3, out.shape[-1], generator=g)
                ip = self.cache[name] = rows @ proj
            ip = ip.to(out.dtype).view(out.shape[0], -1, out.shape[-1])  # the current call's batch, as the real one
            return out + self.weight * ip.mean(1, keepdim=True)
        return hook


class UnetHook:
    def __init__(self):
        self.model = None
        self.control_params = None
        self.hint_shapes = []  # (8·h, 8·w) of the control each call used, per unit

    def hook(self, model, p, control_params):
        self.model = model
        self.control_params = control_params
        outer = self

        def forward(x, timesteps=None, context=None, **kwargs):
            mark, context = unmark(context)
            model.cond_mark = mark
            residual = 0
            for param in outer.control_params:
                if param.control_model_type.name != "ControlNet" or param.guidance_stopped:
                    continue
                if param.used_hint_cond is None:
                    param.used_hint_cond = param.hint_cond
                if isinstance(param.hr_hint_cond, torch.Tensor):
                    h = 8 * x.shape[2]
                    lr, hr = param.hint_cond.shape[2], param.hr_hint_cond.shape[2]
                    param.used_hint_cond = param.hint_cond if abs(h - lr) < abs(h - hr) else param.hr_hint_cond
                hint = param.used_hint_cond
                outer.hint_shapes.append(tuple(hint.shape))
                r = param.control_model(x, hint) * param.weight
                if param.effective_region_mask is not None:
                    r = r * F.interpolate(param.effective_region_mask, size=r.shape[-2:], mode="bilinear")
                residual = residual + r
            x = torch.cat([x[:, :4] + residual, x[:, 4:]], 1) if x.shape[1] > 4 else x + residual
            return model._original_forward(x, timesteps, context=context, **kwargs)

        model._original_forward = model.forward
        model.forward = forward

    def restore(self):
        self.control_params = None
        if self.model is not None and hasattr(self.model, "_original_forward"):
            self.model.forward = self.model._original_forward
            del self.model._original_forward


def mark(cond, positive):
    def one(t):
        row = torch.full_like(t[:, :1], MARK if positive else -MARK)
        return torch.cat([row, t], 1)
    if isinstance(cond, dict):
        return {**cond, "crossattn": one(cond["crossattn"])}
    return one(cond)


def unmark(context):
    if context is None or context.shape[1] < 2 or not bool((context[:, 0].abs() == MARK).all()):
        return torch.ones(context.shape[0], 1, 1, 1, dtype=context.dtype), context
    m = (context[:, 0].mean(1) > 0).to(context.dtype)
    return m.view(-1, 1, 1, 1), context[:, 1:]


ALL_IP_ADAPTERS = []


def clear_all_secondary_control_models(m):
    for ip in ALL_IP_ADAPTERS:
        ip.unhook()
    ALL_IP_ADAPTERS.clear()


class ControlNetScript(scripts.Script):
    def __init__(self):
        self.latest_network = None
        self.enabled_units = []
        self.ui_batch_option_state = ["All ControlNet units for all images in a batch", False]

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.State(None) for _ in range(UNIT_SLOTS)]

    def process(self, p, *units):
        if self.latest_network is not None:
            self.latest_network.restore()
            self.latest_network = None
        clear_all_secondary_control_models(p.sd_model.model.diffusion_model)
        self.enabled_units = [types.SimpleNamespace(model=u.get("model", "control"), **{k: v for k, v in u.items() if k != "model"})
                              for u in units if u]
        if not self.enabled_units:
            return
        unet = p.sd_model.model.diffusion_model
        w, h = p.width // 8 * 8, p.height // 8 * 8
        hr = None
        if getattr(p, "enable_hr", False):  # txt2img with hires fix
            hr_w = p.hr_resize_x or int(p.width * p.hr_scale)
            hr_h = p.hr_resize_y or int(p.height * p.hr_scale)
            hr = (hr_w // 8 * 8, hr_h // 8 * 8)
        params = []
        for unit in self.enabled_units:
            model = unit.model
            mask = None if getattr(unit, "mask", None) is None else image_to_hint(unit.mask, w, h)[:, :1]
            if model == "ip-adapter":
                ip = IPAdapter(unit.image)
                ip.hook(unet)
                ALL_IP_ADAPTERS.append(ip)
                params.append(ControlParams(ip, None, getattr(unit, "weight", 1.0), ControlModelType.IPAdapter, "ip-adapter_clip"))
                continue
            kind = ControlModelType.AttentionInjection if model == "reference" else ControlModelType.ControlNet
            params.append(ControlParams(
                ControlModel(), image_to_hint(unit.image, w, h), getattr(unit, "weight", 1.0), kind,
                getattr(unit, "module", "none"), None if hr is None else image_to_hint(unit.image, *hr), mask))
        self.latest_network = UnetHook()
        self.latest_network.hook(unet, p, params)
        original_setup = p.setup_conds

        def setup_conds_marked():  # ControlNet marks the conds it gets in p.sample
            original_setup()
            p.c, p.uc = mark(p.c, True), mark(p.uc, False)

        p.setup_conds = setup_conds_marked

    def postprocess(self, p, processed, *units):
        clear_all_secondary_control_models(None)
        if self.latest_network is not None:
            self.latest_network.restore()
            self.latest_network = None
