"""Forge's sampling function: cond and uncond as row chunks of one U-Net call (or one call each), ControlNet's
control computed for the call, then the U-Net function wrapper (or ``apply_model``); returns x0 predictions."""

import math

import torch

from modules import shared


def compute_cond_mark(cond_or_uncond, sigmas):
    cond_or_uncond_size = int(sigmas.shape[0])
    cond_mark = []
    for cx in cond_or_uncond:
        cond_mark += [cx] * cond_or_uncond_size
    return torch.Tensor(cond_mark).to(sigmas)


def compute_cond_indices(cond_or_uncond, sigmas):
    cl = int(sigmas.shape[0])
    cond_indices, uncond_indices = [], []
    for i, cx in enumerate(cond_or_uncond):
        if cx == 0:
            cond_indices += list(range(i * cl, (i + 1) * cl))
        else:
            uncond_indices += list(range(i * cl, (i + 1) * cl))
    return cond_indices, uncond_indices


def concat_crossattn(conds):
    """Cross-attention contexts of several token lengths in one batch, as Forge's ``ConditionCrossAttn.concat``: each
    repeated along the tokens to their least common multiple (a 154-token cond beside a 77-token uncond: the uncond
    twice)."""
    length = math.lcm(*(c.shape[1] for c in conds))
    return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in conds])


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    """``cond``/``uncond``: dicts of model conditions (``c_crossattn``, ``y``, ``c_concat``) for the images and the
    ControlNet linked list (``control``). Forge batches the chunks that fit in memory; the stand-in batches both unless
    ``opts.forge_one_chunk_per_call``."""
    control = cond.pop("control", None)
    if uncond is not None:
        uncond.pop("control", None)
    chunks = [(cond, 0)] + ([(uncond, 1)] if uncond is not None else [])
    groups = [[c] for c in chunks] if getattr(shared.opts, "forge_one_chunk_per_call", False) else [chunks]
    out = {}
    for group in groups:
        cond_or_uncond = [kind for _, kind in group]
        input_x = torch.cat([x_in] * len(group))
        c = {key: (concat_crossattn if key == "c_crossattn" else torch.cat)([conds[key] for conds, _ in group]) for key in group[0][0]}
        timestep_ = torch.cat([timestep] * len(group))
        transformer_options = model_options["transformer_options"].copy() if "transformer_options" in model_options else {}
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        transformer_options["cond_mark"] = compute_cond_mark(cond_or_uncond, timestep)
        transformer_options["cond_indices"], transformer_options["uncond_indices"] = compute_cond_indices(cond_or_uncond, timestep)
        c["transformer_options"] = transformer_options
        if control is not None:
            p = control
            while p is not None:
                p.transformer_options = transformer_options
                p = p.previous_controlnet
            c["control"] = control.get_control(input_x, timestep_, c.copy(), len(cond_or_uncond))
            c["control_model"] = control
        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](model.apply_model, {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond})
        else:
            output = model.apply_model(input_x, timestep_, **c)
        for kind, piece in zip(cond_or_uncond, output.chunk(len(group))):
            out[kind] = piece
    return out[0], out.get(1)


def sampling_function(self, denoiser_params, cond_scale, cond_composition=None):
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    cond, uncond = _model_conds(denoiser_params.text_cond), _model_conds(denoiser_params.text_uncond)
    image_cond = denoiser_params.image_cond
    if isinstance(image_cond, torch.Tensor) and image_cond.shape[0] == x.shape[0] and image_cond.shape[2:] == x.shape[2:]:
        cond["c_concat"] = uncond["c_concat"] = image_cond
    if math.isclose(cond_scale, 1.0):
        uncond = None
    control = unet_patcher.controlnet_linked_list
    if control is not None:
        for conds in (cond, uncond):
            if conds is not None:
                conds["control"] = control
    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond, x, timestep, unet_patcher.model_options)
    if uncond_pred is None:
        return cond_pred, cond_pred, cond_pred
    denoised = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    return denoised, cond_pred, uncond_pred


def _model_conds(text):
    if isinstance(text, dict):
        return {"c_crossattn": text["crossattn"], "y": text["vector"]}
    return {"c_crossattn": text}
