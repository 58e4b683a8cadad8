"""FreeU's parameters (API field names are a stable contract) and its model-family presets."""

from __future__ import annotations

from typing import Any, Mapping

from lib_freediff.errors import ParamError
from lib_freediff.freeu.unet import FreeUFactors
from lib_freediff.params import Param, ParamSet

FEATURE = "FreeU"

# official recommended values of the FreeU authors, per model family
FAMILY_VALUES = {
    "SD1.4": {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2},
    "SD1.5": {"b1": 1.5, "b2": 1.6, "s1": 0.9, "s2": 0.2},
    "SD2.1": {"b1": 1.4, "b2": 1.6, "s1": 0.9, "s2": 0.2},
    "SDXL": {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2},
}
AUTO = "Auto"
CUSTOM = "Custom"
PRESET_CHOICES = [AUTO, *FAMILY_VALUES, CUSTOM]
# which family preset "Auto" takes for a detected U-Net family (SD1.x cannot be told apart: SD1.5)
AUTO_FAMILY = {"sd1": "SD1.5", "sd2": "SD2.1", "sdxl": "SDXL"}
FACTOR_NAMES = ("b1", "b2", "s1", "s2")

FREEU_PARAMS = ParamSet(
    FEATURE,
    [
        Param("enabled", "bool", False, "Enable FreeU"),
        Param("version", "choice", 2, "Version", choices=[1, 2],
              info="2: backbone scaled by its own structure map (recommended); 1: constant scaling"),
        Param("b1", "float", 1.5, "b1 (backbone, stage 1)", 0.0, 3.0, 0.01),
        Param("b2", "float", 1.6, "b2 (backbone, stage 2)", 0.0, 3.0, 0.01),
        Param("s1", "float", 0.9, "s1 (skip, stage 1)", 0.0, 3.0, 0.01),
        Param("s2", "float", 0.2, "s2 (skip, stage 2)", 0.0, 3.0, 0.01),
        Param("start", "float", 0.0, "Start at step fraction", 0.0, 1.0, 0.01),
        Param("end", "float", 1.0, "End at step fraction", 0.0, 1.0, 0.01),
        Param("hires", "bool", True, "Apply in hires fix pass"),
        Param("preset", "choice", AUTO, "Values", choices=PRESET_CHOICES,
              info="Auto: the official values for the loaded model; Custom: the sliders"),
        Param("threshold", "int", 1, "Skip filter cutoff (half-width)", 1, 16, 1,
              info="1 = the reference's low-frequency box; larger scales more low frequencies"),
    ],
    infotext_key="FreeU",
)

BUILTIN_PRESETS = {
    f"{name} official": {"enabled": True, "version": 2, "preset": name, **values} for name, values in FAMILY_VALUES.items()
}


def resolve(values: Mapping[str, Any], explicit: set[str], family: str | None, *, named: bool) -> dict[str, Any]:
    """Fills b1..s2 from the preset and checks cross-field rules; returns values with a concrete preset.

    ``named``: the args came as a dict. There, giving b1..s2 without a preset means Custom, and giving
    them together with a non-Custom preset is an error (they would be ignored).
    """
    out = dict(values)
    if out["start"] >= out["end"]:
        raise ParamError(FEATURE, "end", f"must be greater than start ({out['start']} >= {out['end']})")
    given = [n for n in FACTOR_NAMES if n in explicit]
    if named and given:
        if "preset" not in explicit:
            out["preset"] = CUSTOM
        elif out["preset"] != CUSTOM:
            raise ParamError(FEATURE, given[0], f"is set but preset is {out['preset']!r}; set preset to 'Custom' to use your own b1, b2, s1, s2")
    if out["preset"] == AUTO:
        out["preset"] = AUTO_FAMILY.get(family or "", "SD1.5")
    if out["preset"] != CUSTOM:
        out.update(FAMILY_VALUES[out["preset"]])
    return out


def factors_of(values: Mapping[str, Any]) -> FreeUFactors:
    return FreeUFactors(values["version"], values["b1"], values["b2"], values["s1"], values["s2"], values["threshold"])


def infotext_value(values: Mapping[str, Any]) -> str:
    """Compact infotext: version, resolved preset and factors always; schedule only when not default."""
    return FREEU_PARAMS.format_infotext(values, always=("version", "preset", *FACTOR_NAMES))
