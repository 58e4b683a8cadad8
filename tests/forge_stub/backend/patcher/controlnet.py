"""Forge's ControlNet objects: a linked list of ControlBase on the U-Net patcher; ``get_control`` resizes the unit's
control image to the call's latent (×8), broadcasts it to the call's rows and runs the control model."""

import torch

from backend.misc import image_resize


def apply_controlnet_advanced(unet, controlnet, image_bchw, strength, start_percent, end_percent,
                              positive_advanced_weighting=None, negative_advanced_weighting=None,
                              advanced_frame_weighting=None, advanced_sigma_weighting=None, advanced_mask_weighting=None):
    cnet = controlnet.copy().set_cond_hint(image_bchw, strength, (start_percent, end_percent))
    cnet.positive_advanced_weighting = positive_advanced_weighting
    cnet.negative_advanced_weighting = negative_advanced_weighting
    cnet.advanced_frame_weighting = advanced_frame_weighting
    cnet.advanced_sigma_weighting = advanced_sigma_weighting
    cnet.advanced_mask_weighting = advanced_mask_weighting
    m = unet.clone()
    m.add_patched_controlnet(cnet)
    return m


def compute_controlnet_weighting(control, cnet):
    positive = getattr(cnet, "positive_advanced_weighting", None)
    negative = getattr(cnet, "negative_advanced_weighting", None)
    mask = getattr(cnet, "advanced_mask_weighting", None)
    if positive is None and negative is None and mask is None:
        return control
    cond_mark = cnet.transformer_options["cond_mark"]
    for k, v in control.items():
        for i in range(len(v)):
            signal = control[k][i]
            if not isinstance(signal, torch.Tensor):
                continue
            B, C, H, W = signal.shape
            pw = positive.get(k, [1.0])[min(i, len(positive.get(k, [1.0])) - 1)] if positive is not None else 1.0
            nw = negative.get(k, [1.0])[min(i, len(negative.get(k, [1.0])) - 1)] if negative is not None else 1.0
            final = pw * (1.0 - cond_mark) + nw * cond_mark
            if isinstance(mask, torch.Tensor):
                if mask.shape[0] != 1:
                    k_ = int(signal.shape[0] // mask.shape[0])
                    if signal.shape[0] == k_ * mask.shape[0]:
                        mask = mask.repeat(k_, 1, 1, 1)
                signal = signal * torch.nn.functional.interpolate(mask.to(signal), size=(H, W), mode="bilinear")
            control[k][i] = signal * final[:, None, None, None]
    return control


def broadcast_image_to(tensor, target_batch_size, batched_number):
    current_batch_size = tensor.shape[0]
    if current_batch_size == 1:
        return tensor
    per_batch = target_batch_size // batched_number
    tensor = tensor[:per_batch]
    if per_batch > tensor.shape[0]:
        tensor = torch.cat([tensor] * (per_batch // tensor.shape[0]) + [tensor[:(per_batch % tensor.shape[0])]], dim=0)
    if tensor.shape[0] == target_batch_size:
        return tensor
    return torch.cat([tensor] * batched_number, dim=0)


class ControlBase:
    def __init__(self, device=None):
        self.cond_hint_original = None
        self.cond_hint = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.timestep_range = None
        self.transformer_options = {}
        self.previous_controlnet = None

    def set_cond_hint(self, cond_hint, strength=1.0, timestep_percent_range=(0.0, 1.0)):
        self.cond_hint_original = cond_hint
        self.strength = strength
        self.timestep_percent_range = timestep_percent_range
        return self

    def set_previous_controlnet(self, controlnet):
        self.previous_controlnet = controlnet
        return self

    def copy_to(self, c):
        c.cond_hint_original = self.cond_hint_original
        c.strength = self.strength
        c.timestep_percent_range = self.timestep_percent_range

    def control_merge(self, control_input, control_output, control_prev, output_dtype):
        out = {"input": [], "middle": [], "output": []}
        for i, x in enumerate(control_output or []):
            key = "middle" if i == len(control_output) - 1 else "output"
            out[key].append((x * self.strength).to(output_dtype))
        out = compute_controlnet_weighting(out, self)
        if control_prev is not None:
            for key in ("input", "middle", "output"):
                for i, prev in enumerate(control_prev[key]):
                    if i >= len(out[key]):
                        out[key].append(prev)
                    elif prev is not None:
                        out[key][i] = out[key][i] + prev
        return out


class ControlNet(ControlBase):
    def __init__(self, control_model, global_average_pooling=False, device=None, load_device=None, manual_cast_dtype=None):
        super().__init__(device)
        self.control_model = control_model
        self.manual_cast_dtype = manual_cast_dtype

    def get_control(self, x_noisy, t, cond, batched_number):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number)
        if self.cond_hint is None or x_noisy.shape[2] * 8 != self.cond_hint.shape[2] or x_noisy.shape[3] * 8 != self.cond_hint.shape[3]:
            self.cond_hint = image_resize.adaptive_resize(self.cond_hint_original, x_noisy.shape[3] * 8, x_noisy.shape[2] * 8, "nearest-exact", "center")
        if x_noisy.shape[0] != self.cond_hint.shape[0]:
            self.cond_hint = broadcast_image_to(self.cond_hint, x_noisy.shape[0], batched_number)
        control = self.control_model(x=x_noisy, hint=self.cond_hint, timesteps=t, context=cond["c_crossattn"], y=cond.get("y"))
        return self.control_merge(None, control, control_prev, x_noisy.dtype)

    def copy(self):
        c = ControlNet(self.control_model, manual_cast_dtype=self.manual_cast_dtype)
        self.copy_to(c)
        return c


class T2IAdapter(ControlBase):
    pass
