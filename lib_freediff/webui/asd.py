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
from lib_freediff.asd.params import ASD_PARAMS, BUILTIN_PRESETS, FEATURE, buckets_for, check_img2img, check_values, with_tile
from lib_freediff.asd.tiled_vae import should_tile
from lib_freediff.asd.tiles import GridPlan, grid_plan
from lib_freediff.errors import FreeDiffError
from lib_freediff.freeu.params import FEATURE as FREEU
from lib_freediff.schedule import sampler_step
from lib_freediff.webui import features, host, runtime
from lib_freediff.webui.overrides import values_with_overrides

FEATURE_SPEC = features.register(features.Feature(ASD_PARAMS, BUILTIN_PRESETS))

OPTION_MAX_MEGAPIXELS = "freediff_asd_max_megapixels"
OPTION_VAE_THRESHOLD = "freediff_asd_tiled_vae_threshold"
DEFAULT_MAX_MEGAPIXELS = 16.8  # 4096×4096
DEFAULT_VAE_THRESHOLD = 1536  # px: images over 1536×1536 are decoded/encoded in tiles with "auto"


def option(name: str, default):
    return getattr(shared.opts, name, default) if hasattr(shared.opts, "data") and name in shared.opts.data else default


def max_pixels() -> int:
    return int(float(option(OPTION_MAX_MEGAPIXELS, DEFAULT_MAX_MEGAPIXELS)) * 1_000_000)


def loaded_family() -> str | None:
    return host.current().family(getattr(shared, "sd_model", None))


def plan_for(values: Mapping, family: str | None = None):
    """The plan of ``values`` (``tile`` as used)."""
    return plan_any_size(values["width"], values["height"], buckets_for(values, family or loaded_family()), max_pixels(), values["tile"])


def values_for(p, args, family: str | None, is_img2img: bool = False) -> dict | None:
    """This generation's values with ``tile`` as used for a checkpoint of ``family``, or None when the feature is off."""
    values, explicit, overrides = values_with_overrides(ASD_PARAMS, p, args)
    if not values["enabled"]:
        return None
    runtime.check_model(FEATURE, p, family)
    values = with_tile(values, family)
    check_values(values)
    if is_img2img:  # txt2img-only values given with a meaning are refused; the panel hides those fields there
        named = bool(args) and isinstance(args[0], Mapping)
        given = explicit if named else set(values) if getattr(p, "is_api", False) else set()
        check_img2img(set(overrides) | (given & ASD_PARAMS.non_default(values)))
    peer = runtime.enabled_peer(p, host.current().peer_tilers)
    if peer:
        raise FreeDiffError(f"{FEATURE}: '{peer}' is enabled too, and two tilers cannot share the U-Net calls of a pass; "
                            f"turn one of them off", feature=FEATURE)
    return values


def infotext_value(values: Mapping) -> str:
    return ASD_PARAMS.format_infotext(values, always=("width", "height", "mode", "tile", "denoise"))


def pass_grid(values: Mapping, plan) -> GridPlan:
    """The tile grid of the tiled pass (latent px) for the panel's values (``tile`` as used)."""
    overlap = values["overlap"] // 8 if values["mode"] == "explicit" else 0
    return grid_plan(plan.latent.w, plan.latent.h, values["tile"] // 8, overlap)


def describe_plan(values: Mapping, is_img2img: bool) -> str:
    """The live summary in the panel: bucket, render size, crop, tile layout and U-Net work per step."""
    family = loaded_family()
    used = with_tile(values, family)
    plan = plan_for(used, family)
    grid = pass_grid(used, plan)
    lines = []
    if not is_img2img:
        fw, fh = plan.first_pass
        bw, bh = plan.bucket
        shrunk = "" if plan.bucket == plan.first_pass else f": bucket {bw}×{bh} shrunk to the target, the second pass never downscales"
        lines.append(f"First pass **{fw}×{fh}** (bucket ratio {bh / bw:.3f}, target {plan.final.h / plan.final.w:.3f}{shrunk})")
    if grid.tiles == 1:
        layout = "one tile (not tiled)"
    else:
        work = grid.work(plan.latent.w, plan.latent.h)
        layout = (f"{grid.cols}×{grid.rows} tiles of {8 * grid.tile_w}×{8 * grid.tile_h} px ({values['mode']}), "
                  f"U-Net work {work:.2f}× the image per step")
    if not values["tile"]:
        layout += f"; tile size auto: {used['tile']} px"
    lines.append(f"Second pass **{plan.render.w}×{plan.render.h}**: {layout}")
    if plan.render != plan.final:
        lines.append(f"Delivered **{plan.final.w}×{plan.final.h}** (centre crop of {plan.render.w - plan.final.w}×{plan.render.h - plan.final.h} px)")
    return "<br>".join(lines)


class ASDSession:
    """Any-Size Diffusion for one generation: sizes set on ``p``, the host's tiler on the tiled pass, the host's
    VAE in tiles above the threshold, each image cropped to the target."""

    def __init__(self, p, values: dict, is_img2img: bool, family: str | None):
        self.adapter = host.current()
        self.values = values
        self.is_img2img = is_img2img
        self.plan = plan_for(values, family)
        self.tiler = None
        self.controlnet = None
        self.first_pass_control = None  # the host's ControlNet held to its first-pass control (A1111)
        self._seed = 0
        self.vae = None
        self._configure(p)

    def after_model_load(self, p) -> None:
        """``process``: the generation's checkpoint is loaded now (it may not be at ``before_process``), and img2img's
        init images are encoded next."""
        if self.vae is None and self.values["tiled_vae"] != "off":
            self.vae = self.adapter.tiled_vae(p, self._vae_tiles)

    # ---- sizes ----
    def _configure(self, p) -> None:
        plan = self.plan
        if self.is_img2img:
            p.width, p.height = plan.render
            return
        p.width, p.height = plan.first_pass
        self.adapter.prepare_hires(p, turned_on=not p.enable_hr)
        p.enable_hr = True
        p.hr_scale = plan.upscale
        p.hr_resize_x, p.hr_resize_y = plan.render
        p.hr_upscaler = self.values["upscaler"]
        p.denoising_strength = self.values["denoise"]
        p.hr_second_pass_steps = self.values["steps"]

    def crop_into(self, pp) -> None:
        pp.image = self.crop(pp.image)

    def crop(self, image):
        """Centre-crops a rendered image to exactly the target (a no-op when it is already that size)."""
        render, box = self.plan.render, self.plan.final_crop
        if image.size != (render.w, render.h) or render == self.plan.final:
            return image
        return image.crop(tuple(box))

    def _vae_tiles(self, height: int, width: int) -> bool:
        if height % 8 or width % 8:  # an image upscaler's output before the hires crop: the host's own VAE takes it
            return False
        threshold = int(option(OPTION_VAE_THRESHOLD, DEFAULT_VAE_THRESHOLD))
        return self.values["tiled_vae"] == "on" or should_tile(height, width, threshold)

    # ---- tiled sampling ----
    def tiled(self) -> bool:
        """Whether the tiled pass has more than one tile (otherwise it runs as the WebUI's own)."""
        return pass_grid(self.values, self.plan).tiles > 1

    def before_sampling(self, p) -> None:
        controlnet = self.adapter.controlnet_tiles(p, FEATURE) if self.tiled() else None
        if controlnet is not None:
            controlnet.check()  # in txt2img before the first pass: a refusal comes before any model work
        if self.vae is not None:
            self.vae.before_sampling(p)
        self._restore_first_pass_control()
        if not self.is_img2img and not getattr(p, "is_hr_pass", False):
            self.first_pass_control = self.adapter.first_pass_control(p)
            return  # the first pass is never tiled
        if self.tiler is not None and self.tiler.sampler is getattr(p, "sampler", None):
            self.tiler.place(p)  # the same pass again (Forge calls this twice in its hires pass)
            return
        if self.tiler is not None:
            self.tiler.close()
        self.controlnet = controlnet
        self._seed = int(p.seeds[0]) if getattr(p, "seeds", None) else 0
        self.tiler = self.adapter.tiler(p, self._build_tiler, controlnet)

    def _build_tiler(self, inner, prediction: str, alphas_cumprod=None) -> TiledDenoiser:
        v = self.values
        tile_batch = v["tile_batch"] or default_tile_batch(self.adapter.device())
        if self.controlnet is not None and self.controlnet.one_tile_per_call():
            tile_batch = 1
        tiler = TiledDenoiser(
            inner, mode=v["mode"], tile=v["tile"] // 8, overlap=v["overlap"] // 8, offset_range=v["offset_range"] // 8,
            reset_every=v["reset_every"], tile_batch=tile_batch, seed=self._seed, prediction=prediction,
            alphas_cumprod=alphas_cumprod)
        freeu = runtime.get(FREEU)
        if freeu is not None:  # FreeU on the whole latent's statistics, not each tile's (lib_freediff.freeu.tiled)
            tiler.tile_hooks.append(freeu.tile_stats)
        return tiler

    def on_cfg_denoiser(self, params) -> None:
        denoiser = params.denoiser
        if self.tiler is None or denoiser is None:
            return
        steps = denoiser.steps or params.total_sampling_steps
        self.tiler.set_step(denoiser, sampler_step(denoiser.step, steps, denoiser.total_steps), steps)

    def _restore_first_pass_control(self) -> None:
        if self.first_pass_control is not None:
            self.first_pass_control.restore()
            self.first_pass_control = None

    def close(self) -> None:
        self._restore_first_pass_control()
        if self.controlnet is not None:
            self.controlnet.close()
            self.controlnet = None
        if self.tiler is not None:
            self.tiler.close()
            self.tiler = None
        if self.vae is not None:
            self.vae.close()
            self.vae = None


def before_process(p, args, is_img2img: bool) -> None:
    family = host.upcoming_family(p)  # before_process: the generation's checkpoint may not be loaded yet
    values = values_for(p, args, family, is_img2img)
    if values is None:
        return
    session = ASDSession(p, values, is_img2img, family)
    p.extra_generation_params[ASD_PARAMS.infotext_key] = infotext_value(values)
    runtime.start(FEATURE, p, session)


def process(p) -> None:
    runtime.call(FEATURE, "after_model_load", p)


def process_before_every_sampling(p) -> None:
    runtime.call(FEATURE, "before_sampling", p)


def postprocess_image(p, pp) -> None:
    runtime.call(FEATURE, "crop_into", pp)


def postprocess(p) -> None:
    runtime.end(FEATURE)
