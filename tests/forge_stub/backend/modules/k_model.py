"""Forge's KModel: the U-Net under the k-diffusion parameterisation; ``apply_model(x, sigma, **conds)`` returns x0."""

import torch
from k_diffusion.external import DiscreteSchedule

from tiny_sd import sd_alphas_cumprod


class KModel(torch.nn.Module):
    """SD's discrete schedule and eps prediction (what the stand-in's models are)."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
        ac = sd_alphas_cumprod()
        self.predictor = DiscreteSchedule(((1 - ac) / ac) ** 0.5, quantize=False)
        self.computation_dtype = torch.float32

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t
        xc = x / ((sigma.float() ** 2 + 1) ** 0.5).view(-1, 1, 1, 1)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat], dim=1)
        timestep = self.predictor.sigma_to_t(sigma.float())
        eps = self.diffusion_model(xc, timestep, context=c_crossattn, control=control,
                                   transformer_options=transformer_options, **kwargs).float()
        return x - eps * sigma.view(-1, 1, 1, 1)

    def memory_required(self, input_shape):
        return 1.65 * input_shape[0] * input_shape[2] * input_shape[3] * 4 * 16384
