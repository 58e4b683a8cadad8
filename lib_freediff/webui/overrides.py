"""Per-generation overrides of a feature's values, set by XYZ plot axes on the (copied) ``p``."""

from __future__ import annotations

from typing import Any

ATTR = "freediff_overrides"


def set_override(p, feature: str, name: str, value: Any) -> None:
    # copy, not mutate: the XYZ script shallow-copies p for every cell
    current = dict(getattr(p, ATTR, None) or {})
    current[feature] = {**current.get(feature, {}), name: value}
    setattr(p, ATTR, current)


def get_overrides(p, feature: str) -> dict[str, Any]:
    return dict((getattr(p, ATTR, None) or {}).get(feature, {}))


def values_with_overrides(param_set, p, args) -> tuple[dict[str, Any], set[str], dict[str, Any]]:
    """A generation's values: script args (positional or one dict) with this feature's XYZ overrides
    on top, all validated; also the names given explicitly and the overrides themselves."""
    values, explicit = param_set.parse(args)
    overrides = get_overrides(p, param_set.feature)
    if overrides:
        values.update(param_set.validate(overrides, partial=True))
        explicit |= set(overrides)
    return values, explicit, overrides
