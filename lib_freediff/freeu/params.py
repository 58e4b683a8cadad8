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


DEFAULT_FACTORS = {n: FREEU_PARAMS.by_name[n].default for n in FACTOR_NAMES}  # SD1.5's official values


def _same_factors(values: Mapping[str, Any], reference: Mapping[str, float]) -> bool:
    return all(abs(float(values[n]) - reference[n]) < 1e-6 for n in FACTOR_NAMES)


def _positional_preset(values: Mapping[str, Any], auto_family: str, *, api: bool) -> str:
    """The preset of positional args, where b1..s2 are always present (the WebUI pads what a request leaves
    out with the panel's values, and ``preset`` with ``Auto``), so whether they were given is told by value.

    ``Auto``: b1..s2 equal to what the panel shows beside Auto (a family's official values; in the API only
    the padding, i.e. the defaults, or the loaded family's) keep Auto; any other values are the caller's own
    and win: Custom. A family preset with other b1..s2 than its own is refused, naming the first one.
    """
    preset = values["preset"]
    if preset == AUTO:
        shown = (DEFAULT_FACTORS, FAMILY_VALUES[auto_family]) if api else tuple(FAMILY_VALUES.values())
        return AUTO if any(_same_factors(values, ref) for ref in shown) else CUSTOM
    own = FAMILY_VALUES[preset]
    for n in FACTOR_NAMES:
        if abs(float(values[n]) - own[n]) >= 1e-6:
            raise ParamError(FEATURE, n, f"is {values[n]} but preset {preset!r} sets {n}={own[n]}; set preset to 'Custom' "
                                         f"to use your own b1, b2, s1, s2, or give {preset}'s values")
    return preset


def resolve(values: Mapping[str, Any], explicit: set[str], family: str | None, *, named: bool, api: bool = False) -> dict[str, Any]:
    """Fills b1..s2 from the preset and checks cross-field rules; returns values with a concrete preset.

    ``named``: the args came as a dict. There, giving b1..s2 without a preset means Custom, and giving
    them together with a non-Custom preset is an error (they would be ignored). Positional args (``named``
    false, b1..s2 in ``explicit``) follow :func:`_positional_preset`; ``api``: they came through the HTTP API.
    """
    out = dict(values)
    if out["start"] >= out["end"]:
        raise ParamError(FEATURE, "end", f"must be greater than start ({out['start']} >= {out['end']})")
    auto_family = AUTO_FAMILY.get(family or "", "SD1.5")
    given = [n for n in FACTOR_NAMES if n in explicit]
    if named and given:
        if "preset" not in explicit:
            out["preset"] = CUSTOM
        elif out["preset"] != CUSTOM:
            raise ParamError(FEATURE, given[0], f"is set but preset is {out['preset']!r}; set preset to 'Custom' to use your own b1, b2, s1, s2")
    elif given and out["preset"] != CUSTOM:
        out["preset"] = _positional_preset(out, auto_family, api=api)
    if out["preset"] == AUTO:
        out["preset"] = auto_family
    if out["preset"] != CUSTOM:
        out.update(FAMILY_VALUES[out["preset"]])
    return out


def factors_of(values: Mapping[str, Any]) -> FreeUFactors:
    return FreeUFactors(values["version"], values["b1"], values["b2"], values["s1"], values["s2"], values["threshold"])


def infotext_value(values: Mapping[str, Any]) -> str:
    """Compact infotext: version, resolved preset and factors always; schedule only when not default."""
    return FREEU_PARAMS.format_infotext(values, always=("version", "preset", *FACTOR_NAMES))
