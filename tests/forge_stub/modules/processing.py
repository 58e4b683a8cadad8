"""Forge's processing: A1111 v1.10.1's (the stand-in beside, run here) with what Forge changed for a sampling pass:
``forge_objects`` reset from ``forge_objects_original`` at each batch and from ``forge_objects_after_applying_lora``
before ``process_batch`` and before each pass's ``process_before_every_sampling``; the hires pass calls that twice,
first on the first pass's objects (before ``before_hr``'s reset); images decoded and upscaled with the current
objects; ``PostprocessImageArgs`` with the index; the inpainting conditioning only for an inpainting model."""

import os

_A1111 = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "webui_stub", "modules", "processing.py"))
with open(_A1111) as f:
    exec(compile(f.read(), _A1111, "exec"))

from modules import sd_models  # noqa: E402


def reset_forge_objects(sd_model, after_lora=True):
    sd_model.forge_objects = (sd_model.forge_objects_after_applying_lora if after_lora else sd_model.forge_objects_original).shallow_copy()


_a1111_txt2img_init = StableDiffusionProcessingTxt2Img.__init__


def _txt2img_init(self, hr_checkpoint_name=None, hr_additional_modules=None, hr_cfg=1.0, hr_distilled_cfg=3.5,
                  distilled_cfg_scale=3.5, **kwargs):
    """Forge's hires fields, with its dataclass defaults (what an API request that leaves them out gets)."""
    _a1111_txt2img_init(self, **kwargs)
    self.hr_checkpoint_name, self.hr_additional_modules = hr_checkpoint_name, hr_additional_modules
    self.hr_cfg, self.hr_distilled_cfg, self.distilled_cfg_scale = hr_cfg, hr_distilled_cfg, distilled_cfg_scale


def process_images(p):  # noqa: F811 (Forge's)
    """Forge loads the generation's checkpoint after ``before_process`` (the one chosen in the UI or an API
    override): before it, ``p.sd_model`` may be the previous model or Forge's placeholder."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored_opts = {k: opts.data[k] for k in p.override_settings.keys() if k in opts.data}
    try:
        for k, v in p.override_settings.items():
            setattr(opts, k, v)
        p.sd_model, _ = sd_models.forge_model_reload()
        res = process_images_inner(p)
    finally:
        for k, v in stored_opts.items():
            setattr(opts, k, v)
    return res


def process_images_inner(p):  # noqa: F811 (Forge's)
    seed = p.seed if p.seed not in (None, -1) else 1234
    p.setup_prompts()
    p.all_seeds = [int(seed) + x for x in range(len(p.all_prompts))]
    p.all_subseeds = [-1] * len(p.all_prompts)
    if p.scripts is not None:
        p.scripts.process(p)
    infotexts, output_images = [], []
    with torch.inference_mode():
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        for n in range(p.n_iter):
            p.iteration = n
            if state.interrupted or state.stopping_generation:
                break
            reset_forge_objects(p.sd_model, after_lora=False)
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.rng = rng.ImageRNG((shared.sd_model.forge_objects.vae.latent_channels, p.height // opt_f, p.width // opt_f), p.seeds)
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            reset_forge_objects(p.sd_model)
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.setup_conds()
            samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds, subseed_strength=p.subseed_strength, prompts=p.prompts)
            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples)
                p.scripts.post_sample(p, ps)
                samples = ps.samples
            x_samples = sd_samplers_common.samples_to_images_tensor(samples, model=p.sd_model)
            for i, image in enumerate(latents_to_images(x_samples)):
                p.batch_index = i
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image, i + p.iteration * p.batch_size)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                infotexts.append(create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, iteration=n, position_in_batch=i))
                output_images.append(image)
    res = Processed(p, output_images, p.all_seeds[0], infotexts[0] if infotexts else "", infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res


def _txt2img_sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
    self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
    x = self.rng.next()
    reset_forge_objects(self.sd_model)
    if self.scripts is not None:
        self.scripts.process_before_every_sampling(self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning)
    samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning, image_conditioning=self.image_conditioning_zeros(x))
    if not self.enable_hr:
        return samples
    if hasattr(self, 'hr_additional_modules') and 'Use same choices' not in self.hr_additional_modules:
        pass  # Forge reloads the model with these modules for the hires pass (a TypeError when they are None)
    return self.sample_hr_pass(samples, None, seeds, subseeds, subseed_strength, prompts)


def _sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
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
    reset_forge_objects(self.sd_model)
    if self.scripts is not None:
        self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.c, uc=self.uc)
    samples = self.sampler.sample_img2img(self, samples, noise, self.c, self.uc, steps=self.hr_second_pass_steps or self.steps, image_conditioning=self.image_conditioning_zeros(samples))
    self.is_hr_pass = False
    return samples


def _img2img_image_conditioning(self, image):
    return self.init_latent.new_zeros(self.init_latent.shape[0], 5, 1, 1)


def _img2img_sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
    self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
    x = self.rng.next()
    reset_forge_objects(self.sd_model)
    if self.scripts is not None:
        self.scripts.process_before_every_sampling(self, x=self.init_latent, noise=x, c=conditioning, uc=unconditional_conditioning)
    samples = self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning, image_conditioning=self.image_conditioning)
    if getattr(self, "mask", None) is not None:
        samples = samples * self.nmask + self.init_latent * self.mask
    return samples


StableDiffusionProcessingTxt2Img.__init__ = _txt2img_init
StableDiffusionProcessingTxt2Img.sample = _txt2img_sample
StableDiffusionProcessingTxt2Img.sample_hr_pass = _sample_hr_pass
StableDiffusionProcessingImg2Img.img2img_image_conditioning = _img2img_image_conditioning
StableDiffusionProcessingImg2Img.sample = _img2img_sample
