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
