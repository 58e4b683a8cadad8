"""Any-Size Diffusion in a WebUI generation.

txt2img: ``before_process`` sets the first pass to the ARAD bucket and turns on the WebUI's own hires
fix towards the render size (the smallest multiples of 8 covering the target); the hires pass is
sampled with FSTD tiling; each image is centre-cropped to exactly the target. img2img: the run
itself is rendered at the target with FSTD tiling. The first pass of txt2img is never tiled.
"""

from __future__ import annotations

from typing import Mapping

from modules import shared

from lib_freediff.asd.buckets import plan_any_size
from lib_freediff.asd.fstd import TiledDenoiser, default_tile_batch
from lib_freediff.asd.params import ASD_PARAMS, BUILTIN_PRESETS, FEATURE, buckets_for, check_values
from lib_freediff.asd.tiled_vae import should_tile, tiled_decode, tiled_encode
from lib_freediff.asd.tiles import GridPlan, grid_plan
from lib_freediff.freeu.params import FEATURE as FREEU
from lib_freediff.schedule import sampler_step
from lib_freediff.unet_info import model_family
from lib_freediff.webui import features, runtime
from lib_freediff.webui.controlnet import ControlNetTiles, restore_after_failure
from lib_freediff.webui.overrides import values_with_overrides

FEATURE_SPEC = features.register(features.Feature(ASD_PARAMS, BUILTIN_PRESETS))
runtime.after_failed_generation(restore_after_failure)

OPTION_MAX_MEGAPIXELS = "freediff_asd_max_megapixels"
OPTION_VAE_THRESHOLD = "freediff_asd_tiled_vae_threshold"
DEFAULT_MAX_MEGAPIXELS = 16.8  # 4096×4096
DEFAULT_VAE_THRESHOLD = 1536  # px: images over 1536×1536 are decoded/encoded in tiles with "auto"


def option(name: str, default):
    return getattr(shared.opts, name, default) if hasattr(shared.opts, "data") and name in shared.opts.data else default


def max_pixels() -> int:
    return int(float(option(OPTION_MAX_MEGAPIXELS, DEFAULT_MAX_MEGAPIXELS)) * 1_000_000)


def loaded_family() -> str | None:
    try:
        return model_family(shared.sd_model.model.diffusion_model)
    except AttributeError:
        return None


def plan_for(values: Mapping, family: str | None = None):
    return plan_any_size(values["width"], values["height"], buckets_for(values, family or loaded_family()), max_pixels(), values["tile"])


def values_for(p, args) -> dict | None:
    values, _, _ = values_with_overrides(ASD_PARAMS, p, args)
    if not values["enabled"]:
        return None
    check_values(values)
    return values


def infotext_value(values: Mapping) -> str:
    return ASD_PARAMS.format_infotext(values, always=("width", "height", "mode", "denoise"))


def pass_grid(values: Mapping, plan) -> GridPlan:
    """The tile grid of the tiled pass (latent px) for the panel's values."""
    overlap = values["overlap"] // 8 if values["mode"] == "explicit" else 0
    return grid_plan(plan.latent.w, plan.latent.h, values["tile"] // 8, overlap)


def describe_plan(values: Mapping, is_img2img: bool) -> str:
    """The live summary in the panel: bucket, render size, crop, tile layout and U-Net work per step."""
    plan = plan_for(values)
    grid = pass_grid(values, plan)
    lines = []
    if not is_img2img:
        fw, fh = plan.first_pass
        lines.append(f"First pass **{fw}×{fh}** (bucket ratio {fh / fw:.3f}, target {plan.final.h / plan.final.w:.3f})")
    if grid.tiles == 1:
        layout = "one tile (not tiled)"
    else:
        work = grid.work(plan.latent.w, plan.latent.h)
        layout = (f"{grid.cols}×{grid.rows} tiles of {8 * grid.tile_w}×{8 * grid.tile_h} px ({values['mode']}), "
                  f"U-Net work {work:.2f}× the image per step")
    lines.append(f"Second pass **{plan.render.w}×{plan.render.h}**: {layout}")
    if plan.render != plan.final:
        lines.append(f"Delivered **{plan.final.w}×{plan.final.h}** (centre crop of {plan.render.w - plan.final.w}×{plan.render.h - plan.final.h} px)")
    return "<br>".join(lines)


class ASDSession:
    def __init__(self, p, values: dict, is_img2img: bool):
        self.values = values
        self.is_img2img = is_img2img
        self.plan = plan_for(values)
        self.tiler: TiledDenoiser | None = None
        self.controlnet: ControlNetTiles | None = None
        self._cfg = None
        self._vae_restore: list = []
        self._configure(p)
        self._patch_vae()

    # ---- sizes ----
    def _configure(self, p) -> None:
        plan = self.plan
        if self.is_img2img:
            p.width, p.height = plan.render
            return
        p.width, p.height = plan.first_pass
        p.enable_hr = True
        p.hr_scale = plan.upscale
        p.hr_resize_x, p.hr_resize_y = plan.render
        p.hr_upscaler = self.values["upscaler"]
        p.denoising_strength = self.values["denoise"]
        p.hr_second_pass_steps = self.values["steps"]
        p.extra_generation_params[ASD_PARAMS.infotext_key] = infotext_value(self.values)

    def crop_into(self, pp) -> None:
        pp.image = self.crop(pp.image)

    def crop(self, image):
        """Centre-crops a rendered image to exactly the target (a no-op when it is already that size)."""
        render, box = self.plan.render, self.plan.final_crop
        if image.size != (render.w, render.h) or render == self.plan.final:
            return image
        return image.crop(tuple(box))

    # ---- tiled sampling ----
    def tiled(self) -> bool:
        """Whether the tiled pass has more than one tile (otherwise it runs as the WebUI's own)."""
        return pass_grid(self.values, self.plan).tiles > 1

    def before_sampling(self, p) -> None:
        controlnet = ControlNetTiles.of(p, FEATURE) if self.tiled() else None
        if controlnet is not None:
            controlnet.check()  # in txt2img before the first pass: a refusal comes before any model work
        if not self.is_img2img and not getattr(p, "is_hr_pass", False):
            return  # the first pass is never tiled
        self.controlnet = controlnet
        self._wrap(p.sampler.model_wrap_cfg, p)

    def _wrap(self, cfg, p) -> None:
        inner = cfg.inner_model
        if isinstance(inner, TiledDenoiser):
            return
        v = self.values
        # k-diffusion wrappers return x0; the WebUI's timestep samplers (DDIM, PLMS, UniPC) return eps
        prediction = "x0" if hasattr(inner, "sigma_to_t") else "eps"
        tile_batch = v["tile_batch"] or default_tile_batch(getattr(shared, "device", None))
        if self.controlnet is not None and self.controlnet.one_tile_per_call():
            tile_batch = 1
        self.tiler = TiledDenoiser(
            inner, mode=v["mode"], tile=v["tile"] // 8, overlap=v["overlap"] // 8, offset_range=v["offset_range"] // 8,
            reset_every=v["reset_every"], tile_batch=tile_batch, seed=int(p.seeds[0]) if getattr(p, "seeds", None) else 0,
            prediction=prediction, alphas_cumprod=getattr(shared.sd_model, "alphas_cumprod", None))
        self.tiler.tile_context = self.controlnet
        freeu = runtime.get(FREEU)
        if freeu is not None:  # FreeU on the whole latent's statistics, not each tile's (lib_freediff.freeu.tiled)
            self.tiler.tile_hooks.append(freeu.tile_stats)
        cfg.model_wrap = self.tiler
        self._cfg = (cfg, inner)

    def on_cfg_denoiser(self, params) -> None:
        denoiser = params.denoiser
        if self._cfg is None or denoiser is not self._cfg[0]:
            return
        if denoiser.model_wrap is None:  # the WebUI rebuilt its inner model (refiner switch): wrap again
            self._cfg = None
            self._wrap(denoiser, denoiser.p)
        steps = denoiser.steps or params.total_sampling_steps
        self.tiler.set_step(sampler_step(denoiser.step, steps, denoiser.total_steps), steps)

    # ---- tiled VAE ----
    def _patch_vae(self) -> None:
        mode = self.values["tiled_vae"]
        if mode == "off":
            return
        vae = shared.sd_model.first_stage_model
        threshold = int(option(OPTION_VAE_THRESHOLD, DEFAULT_VAE_THRESHOLD))
        original_decode, original_encode = vae.decode, vae.encode

        def big(h: int, w: int) -> bool:
            return mode == "on" or should_tile(h, w, threshold)

        def decode(z, *args, **kwargs):
            if args or kwargs or not big(z.shape[-2] * 8, z.shape[-1] * 8):
                return original_decode(z, *args, **kwargs)
            return tiled_decode(vae, z)

        def encode(x, *args, **kwargs):
            if args or kwargs or not big(x.shape[-2], x.shape[-1]):
                return original_encode(x, *args, **kwargs)
            return tiled_encode(vae, x)

        # attributes of this one VAE object for this generation, removed in close()
        for name, fn in (("decode", decode), ("encode", encode)):
            self._vae_restore.append((vae, name, vae.__dict__.get(name)))
            setattr(vae, name, fn)

    def close(self) -> None:
        if self.controlnet is not None:
            self.controlnet.close()
            self.controlnet = None
        if self._cfg is not None:
            cfg, inner = self._cfg
            if cfg.model_wrap is self.tiler:
                cfg.model_wrap = inner
            self._cfg = None
        for obj, name, previous in reversed(self._vae_restore):
            if previous is None:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, previous)
        self._vae_restore.clear()


def before_process(p, args, is_img2img: bool) -> None:
    values = values_for(p, args)
    if values is None:
        return
    session = ASDSession(p, values, is_img2img)
    if is_img2img:
        p.extra_generation_params[ASD_PARAMS.infotext_key] = infotext_value(values)
    runtime.start(FEATURE, p, session)


def process_before_every_sampling(p) -> None:
    runtime.call(FEATURE, "before_sampling", p)


def postprocess_image(p, pp) -> None:
    runtime.call(FEATURE, "crop_into", pp)


def postprocess(p) -> None:
    runtime.end(FEATURE)
