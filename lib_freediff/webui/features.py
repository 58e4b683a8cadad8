"""The features of the extension: their parameter sets and preset stores, shared by UI, API and routes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from lib_freediff.params import ParamSet
from lib_freediff.presets import PresetStore, feature_slug


@dataclass
class Feature:
    param_set: ParamSet
    builtin_presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    _store: PresetStore | None = None

    @property
    def title(self) -> str:
        return self.param_set.feature

    @property
    def slug(self) -> str:
        return feature_slug(self.title)

    def store(self) -> PresetStore:
        root = presets_root()
        if self._store is None or self._store.folder.parent != root:
            self._store = PresetStore(root, self.param_set, self.builtin_presets)
        return self._store


_features: dict[str, Feature] = {}


def presets_root():
    from pathlib import Path

    from modules import paths

    return Path(os.environ.get("FREEDIFF_PRESETS_DIR") or os.path.join(paths.data_path, "freediff", "presets"))


def register(feature: Feature) -> Feature:
    _features[feature.slug] = feature
    return feature


def by_slug(slug: str) -> Feature | None:
    return _features.get(slug)


def all_features() -> list[Feature]:
    return list(_features.values())
