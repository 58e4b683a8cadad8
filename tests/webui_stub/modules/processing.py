"""process_images with v1.10.1's call order for AlwaysOn scripts, txt2img with hires fix, and img2img."""

import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules import infotext_utils, prompt_parser, rng, scripts, sd_samplers, sd_samplers_common, shared
from modules.shared import opts, state

opt_C = 4
opt_f = 8
LATENT_UPSCALE_MODES = {
    "Latent": {"mode": "bilinear", "antialias": False},
    "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
    "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
    "Latent (nearest)": {"mode": "nearest", "antialias": False},
}


class StableDiffusionProcessing:
    def __init__(self, prompt="", negative_prompt="", seed=-1, steps=20, cfg_scale=7.0, width=64, height=64,
                 batch_size=1, n_iter=1, sampler_name="Euler", denoising_strength=None, scripts=None,
                 script_args=None, override_settings=None, do_not_save_samples=True, **kwargs):
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.seed = seed
        self.subseed = -1
        self.subseed_strength = 0
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.width = width
        self.height = height
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.sampler_name = sampler_name
        self.denoising_strength = denoising_strength
        self.scripts = scripts
        self.script_args = list(script_args or [])
        self.override_settings = override_settings or {}
        self.extra_generation_params = {}
        self.is_hr_pass = False
        self.is_api = False  # set by the API endpoints
        self.sampler = None
        self.sd_model = shared.sd_model
        self.iteration = 0
        self.comments = {}
        for key, value in kwargs.items():
            setattr(self, key, value)

    def close(self):
        self.sampler = None
        self.c = None
        self.uc = None

    def setup_prompts(self):
        self.all_prompts = [self.prompt] * (self.batch_size * self.n_iter) if isinstance(self.prompt, str) else list(self.prompt)
        self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)

    def get_conds(self):
        return self.c, self.uc

    def setup_conds(self):
        prompts = prompt_parser.SdConditioning(self.prompts, width=self.width, height=self.height)
        negative_prompts = prompt_parser.SdConditioning(self.negative_prompts, width=self.width, height=self.height, is_negative_prompt=True)
        self.c = self.sd_model.get_learned_conditioning(prompts)
        self.uc = self.sd_model.get_learned_conditioning(negative_prompts)

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError()

    def image_conditioning_zeros(self, x):
        return x.new_zeros(x.shape[0], 5, 1, 1)


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", infotexts=None):
        self.images = images_list
        self.prompt = p.prompt
        self.seed = seed
        self.info = info
        self.infotexts = infotexts or [info]
        self.extra_generation_params = p.extra_generation_params
        self.width = p.width
        self.height = p.height

    def js(self):
        return json.dumps({"infotexts": self.infotexts, "extra_generation_params": self.extra_generation_params, "width": self.width, "height": self.height})


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0, use_main_prompt=False, index=None, all_negative_prompts=None):
    if index is None:
        index = position_in_batch + iteration * p.batch_size
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        **p.extra_generation_params,
    }
    generation_params_text = ", ".join([k if k == v else f'{k}: {infotext_utils.quote(v)}' for k, v in generation_params.items() if v is not None])
    negative_prompt = (all_negative_prompts or p.all_negative_prompts)[index]
    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{all_prompts[index]}{negative_prompt_text}\n{generation_params_text}".strip()


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored_opts = {k: opts.data[k] for k in p.override_settings.keys() if k in opts.data}
    try:
        for k, v in p.override_settings.items():
            setattr(opts, k, v)
        res = process_images_inner(p)
    finally:
        for k, v in stored_opts.items():
            setattr(opts, k, v)
    return res


def latents_to_images(x):
    x = torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0)
    return [Image.fromarray((255.0 * np.moveaxis(s.float().cpu().numpy(), 0, 2)).astype(np.uint8)) for s in x]


def process_images_inner(p):
    seed = p.seed if p.seed not in (None, -1) else 1234
    p.setup_prompts()
    p.all_seeds = [int(seed) + x for x in range(len(p.all_prompts))]
    p.all_subseeds = [-1] * len(p.all_prompts)

    if p.scripts is not None:
        p.scripts.process(p)

    infotexts = []
    output_images = []
    with torch.no_grad():
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        if state.job_count == -1:
            state.job_count = p.n_iter
        for n in range(p.n_iter):
            p.iteration = n
            if state.interrupted or state.stopping_generation:
                break
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
            latent_channels = getattr(shared.sd_model, 'latent_channels', opt_C)
            p.rng = rng.ImageRNG((latent_channels, p.height // opt_f, p.width // opt_f), p.seeds)
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            if len(p.prompts) == 0:
                break
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.setup_conds()

            samples_ddim = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds, subseed_strength=p.subseed_strength, prompts=p.prompts)
            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples_ddim)
                p.scripts.post_sample(p, ps)
                samples_ddim = ps.samples
            x_samples = sd_samplers_common.samples_to_images_tensor(samples_ddim, model=p.sd_model)
            for i, image in enumerate(latents_to_images(x_samples)):
                p.batch_index = i
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                infotexts.append(create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, iteration=n, position_in_batch=i))
                output_images.append(image)

    res = Processed(p, output_images, p.all_seeds[0], infotexts[0] if infotexts else "", infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, enable_hr=False, denoising_strength=0.75, hr_scale=2.0, hr_upscaler="Latent", hr_second_pass_steps=0,
                 hr_resize_x=0, hr_resize_y=0, hr_sampler_name=None, **kwargs):
        super().__init__(denoising_strength=denoising_strength, **kwargs)
        self.enable_hr = enable_hr
        self.hr_scale = hr_scale
        self.hr_upscaler = hr_upscaler
        self.hr_second_pass_steps = hr_second_pass_steps
        self.hr_resize_x = hr_resize_x
        self.hr_resize_y = hr_resize_y
        self.hr_sampler_name = hr_sampler_name
        self.hr_upscale_to_x = 0
        self.hr_upscale_to_y = 0
        self.truncate_x = 0
        self.truncate_y = 0

    def calculate_target_resolution(self):
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            self.extra_generation_params["Hires upscale"] = self.hr_scale
            self.hr_upscale_to_x = int(self.width * self.hr_scale)
            self.hr_upscale_to_y = int(self.height * self.hr_scale)
        else:
            self.extra_generation_params["Hires resize"] = f"{self.hr_resize_x}x{self.hr_resize_y}"
            if self.hr_resize_y == 0:
                self.hr_upscale_to_x = self.hr_resize_x
                self.hr_upscale_to_y = self.hr_resize_x * self.height // self.width
            elif self.hr_resize_x == 0:
                self.hr_upscale_to_x = self.hr_resize_y * self.width // self.height
                self.hr_upscale_to_y = self.hr_resize_y
            else:
                # cover the requested size keeping the first pass's aspect, then crop the latent (truncate)
                target_w, target_h = self.hr_resize_x, self.hr_resize_y
                src_ratio = self.width / self.height
                dst_ratio = self.hr_resize_x / self.hr_resize_y
                if src_ratio < dst_ratio:
                    self.hr_upscale_to_x = self.hr_resize_x
                    self.hr_upscale_to_y = self.hr_resize_x * self.height // self.width
                else:
                    self.hr_upscale_to_x = self.hr_resize_y * self.width // self.height
                    self.hr_upscale_to_y = self.hr_resize_y
                self.truncate_x = (self.hr_upscale_to_x - target_w) // opt_f
                self.truncate_y = (self.hr_upscale_to_y - target_h) // opt_f

    def init(self, all_prompts, all_seeds, all_subseeds):
        if self.enable_hr:
            self.extra_generation_params["Denoising strength"] = self.denoising_strength
            self.calculate_target_resolution()
            if self.hr_second_pass_steps:
                self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps
            self.extra_generation_params["Hires upscaler"] = self.hr_upscaler

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning)
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning, image_conditioning=self.image_conditioning_zeros(x))
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples, None, seeds, subseeds, subseed_strength, prompts)

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        if shared.state.interrupted:
            return samples
        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        samples = self.upscaled_hr_latent(samples)
        self.rng = rng.ImageRNG(samples.shape[1:], self.seeds)
        noise = self.rng.next()
        self.setup_conds()
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.c, uc=self.uc)
        samples = self.sampler.sample_img2img(self, samples, noise, self.c, self.uc, steps=self.hr_second_pass_steps or self.steps, image_conditioning=self.image_conditioning_zeros(samples))
        self.is_hr_pass = False
        return samples

    def upscaled_hr_latent(self, samples):
        """The hires pass's starting latent: the first pass's upscaled to the hires size, cropped by ``truncate_x/y``.
        (The hosts do this inline in ``sample_hr_pass``; a method here so Forge's stand-in shares it.)"""
        target_width, target_height = self.hr_upscale_to_x, self.hr_upscale_to_y
        latent_scale_mode = LATENT_UPSCALE_MODES.get(self.hr_upscaler)
        if latent_scale_mode is not None:
            samples = F.interpolate(samples, size=(target_height // opt_f, target_width // opt_f), mode=latent_scale_mode["mode"], antialias=latent_scale_mode["antialias"])
        else:
            # the stand-in has no upscaler models: every image upscaler resizes bicubically
            decoded = self.sd_model.decode_first_stage(samples)
            decoded = F.interpolate(decoded, size=(target_height, target_width), mode="bicubic").clamp(-1, 1)
            samples = self.sd_model.get_first_stage_encoding(self.sd_model.encode_first_stage(decoded))
        return samples[:, :, self.truncate_y//2:samples.shape[2]-(self.truncate_y+1)//2, self.truncate_x//2:samples.shape[3]-(self.truncate_x+1)//2]


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, init_images=None, denoising_strength=0.75, mask=None, inpainting_fill=1, **kwargs):
        super().__init__(denoising_strength=denoising_strength, **kwargs)
        self.init_images = init_images or []
        self.image_mask = mask
        self.inpainting_fill = inpainting_fill

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        images = []
        for img in self.init_images:
            img = img.convert("RGB").resize((self.width, self.height), Image.LANCZOS)
            images.append(np.moveaxis(np.array(img).astype(np.float32) / 255.0, 2, 0))
        batch = np.stack([images[i % len(images)] for i in range(self.batch_size)])
        image = torch.from_numpy(batch) * 2.0 - 1.0
        self.init_latent = self.sd_model.get_first_stage_encoding(self.sd_model.encode_first_stage(image))
        if self.image_mask is not None:
            mask = np.array(self.image_mask.convert("L").resize((self.width // opt_f, self.height // opt_f))).astype(np.float32) / 255.0
            latmask = torch.from_numpy(np.round(mask))[None, None]
            self.mask = 1.0 - latmask  # keep where the mask is black
            self.nmask = latmask
            self.masked_image = image * (1 - torch.from_numpy(np.array(self.image_mask.convert("L").resize((self.width, self.height))) / 255.0 > 0.5).float())
        self.image_conditioning = self.img2img_image_conditioning(image)

    def img2img_image_conditioning(self, image):
        if self.sd_model.model.conditioning_key != "hybrid":
            return self.init_latent.new_zeros(self.init_latent.shape[0], 5, 1, 1)
        mask = self.nmask if getattr(self, "nmask", None) is not None else torch.ones_like(self.init_latent[:, :1])
        masked = self.sd_model.get_first_stage_encoding(self.sd_model.encode_first_stage(getattr(self, "masked_image", image)))
        return torch.cat([mask.expand(masked.shape[0], 1, *masked.shape[2:]), masked], dim=1)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=x, c=conditioning, uc=unconditional_conditioning)
        samples = self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning, image_conditioning=self.image_conditioning)
        if getattr(self, "mask", None) is not None:
            samples = samples * self.nmask + self.init_latent * self.mask
        return samples
