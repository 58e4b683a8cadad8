"""Named presets of a feature's settings, stored as JSON files.

Layout: ``<root>/<feature-slug>/<name>.json`` holding ``{"format": 1, "feature": ..., "name": ...,
"values": {...}}``. Writes are atomic (temp file + ``os.replace``); a file that fails to parse or
validate is reported and left untouched; built-in presets live in code and are read-only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lib_freediff.errors import FreeDiffError, ParamError
from lib_freediff.params import ParamSet

FORMAT_VERSION = 1
MAX_NAME_LENGTH = 64
MAX_FILE_BYTES = 256 * 1024
# letters, digits, space, and . _ - ( ) + ; no path separators, no leading dot
_NAME_RE = re.compile(r"^[\w][\w .()+\-]*$", re.UNICODE)


class PresetError(FreeDiffError):
    """A preset that cannot be read, written, found or changed."""


@dataclass(frozen=True)
class PresetInfo:
    name: str
    builtin: bool
    # None for a readable preset; otherwise why it cannot be used (the file stays as it is)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "builtin": self.builtin, "error": self.error}


def feature_slug(feature: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", feature.lower()).strip("-")


def check_preset_name(name: Any) -> str:
    """Returns the cleaned name or raises: names map to one file inside the feature's folder."""
    if not isinstance(name, str):
        raise ParamError("presets", "name", f"expected text, got {type(name).__name__}")
    cleaned = name.strip()
    if not cleaned:
        raise ParamError("presets", "name", "must not be empty")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise ParamError("presets", "name", f"longer than {MAX_NAME_LENGTH} characters")
    if not _NAME_RE.match(cleaned) or cleaned in (".", ".."):
        raise ParamError("presets", "name", f"{name!r} may only use letters, digits, spaces and . _ - ( ) +, and must not start with a dot")
    return cleaned


class PresetStore:
    """Presets of one feature: built-ins (read-only) plus user files under ``root``."""

    def __init__(self, root: str | os.PathLike, param_set: ParamSet, builtins: Mapping[str, Mapping[str, Any]] | None = None):
        self.param_set = param_set
        self.folder = Path(root) / feature_slug(param_set.feature)
        self.builtins = {name: param_set.validate(values) for name, values in (builtins or {}).items()}
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        path = self.folder / f"{name}.json"
        # belt and braces: the name check already forbids separators
        if path.resolve().parent != self.folder.resolve():
            raise ParamError("presets", "name", f"{name!r} is not a plain preset name")
        return path

    def list(self) -> list[PresetInfo]:
        infos = [PresetInfo(name, True) for name in self.builtins]
        if self.folder.is_dir():
            for path in sorted(self.folder.glob("*.json"), key=lambda p: p.name.lower()):
                name = path.stem
                if name in self.builtins:
                    continue
                try:
                    self._read(path, name)
                    infos.append(PresetInfo(name, False))
                except PresetError as e:
                    infos.append(PresetInfo(name, False, str(e)))
        return infos

    def names(self) -> list[str]:
        return [info.name for info in self.list() if info.error is None]

    def get(self, name: str) -> dict[str, Any]:
        name = check_preset_name(name)
        if name in self.builtins:
            return dict(self.builtins[name])
        path = self._path(name)
        if not path.is_file():
            raise PresetError(f"{self.param_set.feature} preset {name!r} not found")
        return self._read(path, name)

    def _read(self, path: Path, name: str) -> dict[str, Any]:
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise PresetError(f"preset file {path} is larger than {MAX_FILE_BYTES} bytes")
            data = json.loads(path.read_text(encoding="utf-8"))
        except PresetError:
            raise
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PresetError(f"preset file {path} is not valid JSON ({e}); it was left untouched") from None
        if not isinstance(data, dict) or not isinstance(data.get("values"), dict):
            raise PresetError(f"preset file {path} has no 'values' object; it was left untouched")
        if data.get("format") != FORMAT_VERSION:
            raise PresetError(f"preset file {path} has format {data.get('format')!r}, expected {FORMAT_VERSION}; it was left untouched")
        try:
            return self.param_set.validate(data["values"])
        except ParamError as e:
            raise PresetError(f"preset file {path}: {e}; it was left untouched") from None

    def save(self, name: str, values: Mapping[str, Any], *, overwrite: bool = True) -> dict[str, Any]:
        """Validates and writes a preset atomically; returns the stored values."""
        name = check_preset_name(name)
        if name in self.builtins:
            raise PresetError(f"{name!r} is a built-in {self.param_set.feature} preset and cannot be changed; save under another name")
        clean = self.param_set.validate(values)
        payload = {"format": FORMAT_VERSION, "feature": self.param_set.feature, "name": name, "values": clean}
        text = json.dumps(payload, indent=2, sort_keys=True)
        with self._lock:
            path = self._path(name)
            if path.exists() and not overwrite:
                raise PresetError(f"{self.param_set.feature} preset {name!r} exists already")
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        return clean

    def delete(self, name: str) -> None:
        name = check_preset_name(name)
        if name in self.builtins:
            raise PresetError(f"{name!r} is a built-in {self.param_set.feature} preset and cannot be deleted")
        with self._lock:
            path = self._path(name)
            if not path.is_file():
                raise PresetError(f"{self.param_set.feature} preset {name!r} not found")
            path.unlink()
