"""Forge's CFGDenoiser.forward: the ``cfg_denoiser`` callback, then ``backend``'s sampling function (cond and uncond
through the U-Net patcher, x0 out); no ``cfg_denoised`` callback; the ``cfg_after_cfg`` callback."""

import os

_A1111 = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "webui_stub", "modules",
                                       "sd_samplers_cfg_denoiser.py"))
with open(_A1111) as f:  # Forge's CFGDenoiser is A1111's with forward replaced
    exec(compile(f.read(), _A1111, "exec"))

from backend.sampling.sampling_function import sampling_function  # noqa: E402


def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
    if state.interrupted or state.skipped:
        raise sd_samplers_common.InterruptedException
    denoiser_params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond, uncond, self)
    cfg_denoiser_callback(denoiser_params)
    if self.p.is_hr_pass:  # Forge's hires pass has a CFG of its own
        cond_scale = self.p.hr_cfg
    denoised, cond_pred, uncond_pred = sampling_function(self, denoiser_params=denoiser_params, cond_scale=cond_scale)
    if self.mask is not None:
        denoised = denoised * self.nmask + self.init_latent * self.mask
    self.sampler.last_latent = denoised
    after_cfg_callback_params = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
    cfg_after_cfg_callback(after_cfg_callback_params)
    denoised = after_cfg_callback_params.x
    self.step += 1
    return denoised


CFGDenoiser.forward = forward
