"""Typed parameter sets: one declaration per feature drives the UI, the API, infotext, XYZ and presets.

A feature's arguments arrive as WebUI positional script args (UI or API list), as one dict of named
fields (API), from pasted infotext, or from a preset file. All of them go through ``ParamSet.parse`` /
``ParamSet.validate`` so every path gives the same defaults and the same errors.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from lib_freediff.errors import ParamError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One named field of a feature (its API name is a public contract)."""

    name: str
    kind: str  # "bool" | "int" | "float" | "choice" | "str" | "json"
    default: Any
    label: str = ""
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: Sequence[Any] | None = None
    info: str = ""
    # in infotext: written only when it differs from the default, to keep the line short
    infotext: bool = True
    # choices resolved at runtime (e.g. model files); validation accepts any str then
    open_choices: bool = False
    # custom validator run after type coercion: value -> value (raise ValueError with a reason)
    check: Callable[[Any], Any] | None = field(default=None, compare=False)
    # words accepted for a value, e.g. {"auto": 0}
    aliases: Mapping[str, Any] | None = None
    # the value as written in the infotext, before escaping (parsed back by ``check``)
    infotext_encode: Callable[[Any], Any] | None = field(default=None, compare=False)

    def coerce(self, feature: str, value: Any) -> Any:
        """Converts ``value`` (from JSON, a form, or infotext text) to this parameter's type, or raises."""
        try:
            value = self._coerce(value)
            if self.check is not None:
                value = self.check(value)
        except ParamError:
            raise
        except (TypeError, ValueError) as e:
            raise ParamError(feature, self.name, str(e)) from None
        return value

    def _coerce(self, value: Any) -> Any:
        if self.aliases and isinstance(value, str) and value.strip().lower() in self.aliases:
            return self.aliases[value.strip().lower()]
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError(f"expected true or false, got {_short(value)}")
        if self.kind in ("int", "float"):
            if isinstance(value, bool) or value is None:
                raise ValueError(f"expected a number, got {_short(value)}")
            if isinstance(value, str):
                try:
                    value = float(value.strip())
                except ValueError:
                    raise ValueError(f"expected a number, got {_short(value)}") from None
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {_short(value)}")
            if self.kind == "int":
                if float(value) != int(value):
                    raise ValueError(f"expected a whole number, got {_short(value)}")
                value = int(value)
            else:
                value = float(value)
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"{value} is below the minimum {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"{value} is above the maximum {self.maximum}")
            return value
        if self.kind == "choice":
            for choice in self.choices or ():
                if value == choice or (isinstance(value, str) and str(choice).lower() == value.strip().lower()):
                    return choice
                # ints arrive as strings from infotext and XYZ
                if isinstance(choice, int) and isinstance(value, str) and value.strip() == str(choice):
                    return choice
            if self.open_choices:
                if isinstance(value, str):
                    return value.strip()
                raise ValueError(f"expected a name (text), got {_short(value)}")
            raise ValueError(f"{_short(value)} is not one of {list(self.choices or ())}")
        if self.kind == "str":
            if value is None:
                return ""
            if not isinstance(value, str):
                raise ValueError(f"expected text, got {type(value).__name__}")
            return value
        if self.kind == "json":
            return value
        raise AssertionError(f"unknown parameter kind {self.kind}")


class ParamSet:
    """The ordered parameters of one feature; the order is the positional (UI and API list) order."""

    def __init__(self, feature: str, params: Sequence[Param], infotext_key: str):
        self.feature = feature
        self.params = list(params)
        self.by_name = {p.name: p for p in self.params}
        self.infotext_key = infotext_key
        assert len(self.by_name) == len(self.params), "duplicate parameter names"

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def non_default(self, values: Mapping[str, Any]) -> set[str]:
        """Names whose value differs from the default: what a padded positional API request surely gave."""
        return {p.name for p in self.params if p.name in values and values[p.name] != p.default}

    def validate(self, values: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
        """Checks named values; unknown names are errors; missing ones take defaults unless ``partial``."""
        if not isinstance(values, Mapping):
            raise ParamError(self.feature, "args", f"expected an object of named fields, got {type(values).__name__}")
        unknown = [k for k in values if k not in self.by_name]
        if unknown:
            raise ParamError(self.feature, str(unknown[0]), f"unknown field; known fields are {', '.join(self.names())}")
        out = {} if partial else self.defaults()
        for name, value in values.items():
            out[name] = self.by_name[name].coerce(self.feature, value)
        return out

    def parse(self, args: Sequence[Any]) -> tuple[dict[str, Any], set[str]]:
        """Parses script args: either one dict of named fields, or positional values in documented order.

        Returns the full value dict and the set of names the caller gave explicitly (a dict's keys, or
        every position present in a list).
        """
        args = list(args)
        if args and isinstance(args[0], Mapping):
            # the WebUI's API pads the remaining positions with the UI defaults: they carry nothing
            return self.validate(args[0]), set(args[0].keys())
        if len(args) > len(self.params):
            raise ParamError(self.feature, "args", f"expected at most {len(self.params)} positional values ({', '.join(self.names())}), got {len(args)}")
        values = dict(zip(self.names(), args))
        return self.validate(values), set(values)

    # ---- infotext: one compact key per feature, value "name=value name=value ..." ----

    def format_infotext(self, values: Mapping[str, Any], *, always: Sequence[str] = ()) -> str:
        """Compact text for the infotext: fields listed in ``always`` plus every non-default one."""
        parts = []
        for p in self.params:
            if not p.infotext or p.name == "enabled":
                continue
            value = values.get(p.name, p.default)
            if p.name not in always and value == p.default:
                continue
            parts.append(f"{p.name}={_encode_token(p.infotext_encode(value) if p.infotext_encode else value)}")
        return " ".join(parts)

    def parse_infotext(self, text: str) -> dict[str, Any]:
        """Values from a compact infotext value; unknown names are ignored (newer versions may add some)."""
        values: dict[str, Any] = {"enabled": True} if "enabled" in self.by_name else {}
        for token in str(text).split():
            name, sep, raw = token.partition("=")
            if not sep or name not in self.by_name:
                continue
            values[name] = urllib.parse.unquote(raw)
        return self.validate(values)


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut short (a misplaced base64 image must not flood it)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    kind = f"a {type(value).__name__} " if not isinstance(value, str) else ""
    return f"{kind}{text[:limit - 1]}…"


def _encode_token(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.6g}"
        return text
    # infotext is "key: value, key: value": keep ',', ':', spaces and quotes out of our value
    return urllib.parse.quote(str(value), safe="/.-_+x")

