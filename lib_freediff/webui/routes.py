"""HTTP routes under /freediff/v1: version and capabilities, and the preset stores of every feature."""

from __future__ import annotations

from typing import Any

from fastapi import Body, FastAPI, HTTPException

import lib_freediff
from lib_freediff.errors import FreeDiffError
from lib_freediff.presets import PresetError
from lib_freediff.webui import features, host

PREFIX = "/freediff/v1"


def _feature(slug: str) -> features.Feature:
    feature = features.by_slug(slug)
    if feature is None:
        raise HTTPException(status_code=404, detail=f"unknown feature {slug!r}; known: {[f.slug for f in features.all_features()]}")
    return feature


def _fail(error: FreeDiffError):
    status = 404 if isinstance(error, PresetError) and "not found" in str(error) else 422
    if isinstance(error, PresetError) and ("built-in" in str(error) or "exists already" in str(error)):
        status = 409
    raise HTTPException(status_code=status, detail=str(error))


def capabilities() -> dict[str, Any]:
    out = {"name": "sd-webui-freediff", "version": lib_freediff.__version__, "api": "v1", "host": host.current().name,
           "features": {}}
    for feature in features.all_features():
        ps = feature.param_set
        out["features"][feature.slug] = {
            "title": feature.title,
            "infotext_key": ps.infotext_key,
            "fields": [
                {"name": p.name, "type": p.kind, "default": p.default, "minimum": p.minimum, "maximum": p.maximum,
                 "choices": list(p.choices) if p.choices is not None else None, "label": p.label}
                for p in ps.params
            ],
        }
    return out


def register(app: FastAPI) -> None:
    if any(getattr(r, "path", "") == f"{PREFIX}/version" for r in app.routes):
        return  # the WebUI calls app_started again after a UI reload

    @app.get(f"{PREFIX}/version")
    def version():
        return capabilities()

    @app.get(f"{PREFIX}/presets/{{slug}}")
    def list_presets(slug: str):
        return {"feature": slug, "presets": [info.as_dict() for info in _feature(slug).store().list()]}

    @app.get(f"{PREFIX}/presets/{{slug}}/{{name}}")
    def get_preset(slug: str, name: str):
        try:
            return {"feature": slug, "name": name, "values": _feature(slug).store().get(name)}
        except FreeDiffError as e:
            _fail(e)

    @app.put(f"{PREFIX}/presets/{{slug}}/{{name}}")
    def save_preset(slug: str, name: str, body: dict = Body(...)):
        values = body.get("values", body) if isinstance(body, dict) else body
        try:
            return {"feature": slug, "name": name.strip(), "values": _feature(slug).store().save(name, values)}
        except FreeDiffError as e:
            _fail(e)

    @app.delete(f"{PREFIX}/presets/{{slug}}/{{name}}")
    def delete_preset(slug: str, name: str):
        try:
            _feature(slug).store().delete(name)
        except FreeDiffError as e:
            _fail(e)
        return {"feature": slug, "name": name, "deleted": True}
