"""FreeU in a WebUI generation: parse args, resolve values, attach hooks, follow the sampler's steps."""

from __future__ import annotations

from typing import Mapping

from modules import shared

from lib_freediff.freeu.params import AUTO_FAMILY, BUILTIN_PRESETS, CUSTOM, FACTOR_NAMES, FEATURE, FREEU_PARAMS, factors_of, infotext_value, resolve
from lib_freediff.freeu.tiled import TileStats
from lib_freediff.schedule import in_window, sampler_step
from lib_freediff.webui import features, host, runtime
from lib_freediff.webui.overrides import values_with_overrides

FEATURE_SPEC = features.register(features.Feature(FREEU_PARAMS, BUILTIN_PRESETS))


def values_for(p, args) -> dict | None:
    """The resolved FreeU values of this generation, or None when FreeU is off."""
    values, explicit, overrides = values_with_overrides(FREEU_PARAMS, p, args)
    named = bool(args) and isinstance(args[0], Mapping)
    # an XYZ axis over b1..s2 only makes sense with the sliders' values in use
    if any(n in overrides for n in FACTOR_NAMES) and "preset" not in overrides:
        values["preset"] = CUSTOM
    elif "preset" in overrides:  # an axis over the preset: the sliders' values are only on show
        explicit -= set(FACTOR_NAMES) - set(overrides)
    if not values["enabled"]:
        return None
    family = host.current().family(p.sd_model)  # process: the generation's checkpoint is loaded
    runtime.check_model(FEATURE, p, family)
    return resolve(values, explicit, family, named=named, api=bool(getattr(p, "is_api", False)))


class FreeUSession:
    """FreeU for one generation: the host puts it on the U-Net before each sampling pass and the step schedule
    switches it on and off."""

    def __init__(self, values: dict):
        self.values = values
        self.in_hires = False
        self.tile_stats = TileStats()  # the tiles of ASD's tiled pass share the whole latent's statistics
        self.freeu = host.current().freeu(factors_of(values), self.tile_stats)

    def _pass_enabled(self) -> bool:
        return not self.in_hires or self.values["hires"]

    def before_sampling(self, p) -> None:
        self.tile_stats.reset()  # before every sampling run: statistics of an earlier run are never used
        self.freeu.attach(p)
        self.freeu.set_active(self._pass_enabled() and self.values["start"] <= 0)

    def enter_hires(self) -> None:
        self.in_hires = True

    def on_cfg_denoiser(self, params) -> None:
        denoiser = params.denoiser
        if denoiser is None:
            return
        steps = denoiser.steps or params.total_sampling_steps
        step = sampler_step(denoiser.step, steps, denoiser.total_steps)
        self.freeu.set_active(self._pass_enabled() and in_window(step, steps, self.values["start"], self.values["end"]))

    def close(self) -> None:
        self.freeu.close()


def process(p, args) -> None:
    values = values_for(p, args)
    if values is None:
        return
    p.extra_generation_params[FREEU_PARAMS.infotext_key] = infotext_value(values)
    runtime.start(FEATURE, p, FreeUSession(values))


def process_before_every_sampling(p) -> None:
    runtime.call(FEATURE, "before_sampling", p)


def before_hr(p) -> None:
    runtime.call(FEATURE, "enter_hires")


def postprocess(p) -> None:
    runtime.end(FEATURE)


def auto_family_preset() -> str:
    """The family preset "Auto" resolves to for the model loaded now (SD1.5 when none is loaded)."""
    return AUTO_FAMILY.get(host.current().family(getattr(shared, "sd_model", None)) or "", "SD1.5")
