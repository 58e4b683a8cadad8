"""FreeU in a WebUI generation: parse args, resolve values, attach hooks, follow the sampler's steps."""

from __future__ import annotations

from typing import Mapping

from modules import shared

from lib_freediff.freeu.params import AUTO_FAMILY, BUILTIN_PRESETS, CUSTOM, FACTOR_NAMES, FEATURE, FREEU_PARAMS, factors_of, infotext_value, resolve
from lib_freediff.freeu.tiled import TileStats
from lib_freediff.freeu.unet import FreeUPatch, remove_all_hooks
from lib_freediff.schedule import in_window, sampler_step
from lib_freediff.unet_info import model_family
from lib_freediff.webui import features, runtime
from lib_freediff.webui.overrides import values_with_overrides

FEATURE_SPEC = features.register(features.Feature(FREEU_PARAMS, BUILTIN_PRESETS))


def current_unet():
    return shared.sd_model.model.diffusion_model


def values_for(p, args) -> dict | None:
    """The resolved FreeU values of this generation, or None when FreeU is off."""
    values, explicit, overrides = values_with_overrides(FREEU_PARAMS, p, args)
    named = bool(args) and isinstance(args[0], Mapping)
    # an XYZ axis over b1..s2 only makes sense with the sliders' values in use
    if any(n in overrides for n in FACTOR_NAMES) and "preset" not in overrides:
        values["preset"] = CUSTOM
    if not values["enabled"]:
        return None
    return resolve(values, explicit, model_family(current_unet()), named=named)


class FreeUSession:
    def __init__(self, values: dict):
        self.values = values
        self.patch = None
        self.in_hires = False
        self.tile_stats = TileStats()  # the tiles of ASD's tiled pass share the whole latent's statistics
        self.attach()

    def attach(self) -> None:
        self.tile_stats.reset()  # before every sampling run: statistics of an earlier run are never used
        unet = current_unet()
        if self.patch is not None and self.patch.unet is unet:
            return
        if self.patch is not None:
            self.patch.remove()
        remove_all_hooks(unet)  # anything an earlier, crashed process left behind
        self.patch = FreeUPatch(unet, factors_of(self.values), tiles=self.tile_stats).attach()
        self.patch.active = self._pass_enabled() and self.values["start"] <= 0

    def _pass_enabled(self) -> bool:
        return not self.in_hires or self.values["hires"]

    def enter_hires(self) -> None:
        self.in_hires = True
        self.attach()
        self.patch.active = self._pass_enabled() and self.values["start"] <= 0

    def on_cfg_denoiser(self, params) -> None:
        denoiser = params.denoiser
        if denoiser is None or self.patch is None:
            return
        steps = denoiser.steps or params.total_sampling_steps
        step = sampler_step(denoiser.step, steps, denoiser.total_steps)
        self.patch.active = self._pass_enabled() and in_window(step, steps, self.values["start"], self.values["end"])

    def close(self) -> None:
        if self.patch is not None:
            self.patch.remove()


def process(p, args) -> None:
    values = values_for(p, args)
    if values is None:
        return
    p.extra_generation_params[FREEU_PARAMS.infotext_key] = infotext_value(values)
    runtime.start(FEATURE, p, FreeUSession(values))


def process_before_every_sampling(p) -> None:
    runtime.call(FEATURE, "attach")


def before_hr(p) -> None:
    runtime.call(FEATURE, "enter_hires")


def postprocess(p) -> None:
    runtime.end(FEATURE)


def auto_family_preset() -> str:
    """The family preset "Auto" resolves to for the model loaded now (SD1.5 when none is loaded)."""
    try:
        return AUTO_FAMILY.get(model_family(current_unet()) or "", "SD1.5")
    except AttributeError:
        return "SD1.5"
