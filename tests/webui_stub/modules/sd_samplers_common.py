import inspect

import k_diffusion.sampling

from modules import shared
from modules.shared import opts, state


class InterruptedException(BaseException):
    pass


class SamplerData:
    def __init__(self, name, funcname, aliases, options):
        self.name, self.funcname, self.aliases, self.options = name, funcname, aliases, options

    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


def setup_img2img_steps(p, steps=None):
    if opts.img2img_fix_steps or steps is not None:
        requested_steps = (steps or p.steps)
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.stop_at = None
        self.config = None
        self.last_latent = None
        self.s_min_uncond = None
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}

    def callback_state(self, d):
        step = d['i']
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step
        shared.total_tqdm.update()

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = p.mask if hasattr(p, 'mask') else None
        self.model_wrap_cfg.nmask = p.nmask if hasattr(p, 'nmask') else None
        self.model_wrap_cfg.step = 0
        self.s_min_uncond = getattr(p, 's_min_uncond', 0.0)
        # the WebUI swaps k-diffusion's torch for one whose randn_like draws from the image RNG
        k_diffusion.sampling.torch = TorchHijack(p)
        return {}


class TorchHijack:
    def __init__(self, p):
        self.rng = p.rng

    def __getattr__(self, item):
        import torch
        if item == 'randn_like':
            return self.randn_like
        return getattr(torch, item)

    def randn_like(self, x):
        return self.rng.next()


def images_tensor_to_samples(image, approximation=None, model=None):
    model = model or shared.sd_model
    return model.get_first_stage_encoding(model.encode_first_stage(image.to(model.first_stage_model.device if hasattr(model.first_stage_model, "device") else "cpu")))


def samples_to_images_tensor(sample, approximation=None, model=None):
    model = model or shared.sd_model
    return model.decode_first_stage(sample)


def decode_first_stage(model, x):
    return samples_to_images_tensor(x, model=model)


