"""Preset store faults and the /freediff/v1 routes."""

import json
import os

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_freediff.errors import ParamError
from lib_freediff.freeu.params import BUILTIN_PRESETS, FREEU_PARAMS
from lib_freediff.presets import PresetError, PresetStore
from lib_freediff.webui import freeu  # noqa: F401  (registers the feature)
from lib_freediff.webui import routes


@pytest.fixture
def store(tmp_path):
    return PresetStore(tmp_path, FREEU_PARAMS, BUILTIN_PRESETS)


def test_save_get_list_delete(store):
    saved = store.save("soft look", {"enabled": True, "b1": 1.1, "preset": "Custom"})
    assert saved["b1"] == 1.1 and saved["version"] == 2  # omitted fields take the defaults
    assert store.get("soft look") == saved
    assert "soft look" in store.names() and "SD1.5 official" in store.names()
    store.delete("soft look")
    assert "soft look" not in store.names()
    assert not list(store.folder.iterdir())  # no temp files left


def test_builtins_are_read_only(store):
    with pytest.raises(PresetError, match="built-in"):
        store.save("SDXL official", {"enabled": True})
    with pytest.raises(PresetError, match="built-in"):
        store.delete("SDXL official")
    assert store.get("SDXL official")["b1"] == 1.3


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "x" * 65, "c:\\x", "a\x00b"])
def test_names_cannot_escape_the_folder(store, name):
    with pytest.raises(ParamError, match="'name'"):
        store.save(name, {"enabled": True})


def test_corrupt_file_is_reported_and_left_untouched(store):
    store.save("good", {"enabled": True})
    bad = store.folder / "broken.json"
    bad.write_text("{not json")
    wrong = store.folder / "wrong.json"
    wrong.write_text(json.dumps({"format": 1, "values": {"b1": "banana"}}))
    infos = {i.name: i for i in store.list()}
    assert infos["good"].error is None
    assert "not valid JSON" in infos["broken"].error
    assert "'b1'" in infos["wrong"].error
    assert "broken" not in store.names()
    with pytest.raises(PresetError, match="left untouched"):
        store.get("broken")
    assert bad.read_text() == "{not json"
    # saving under that name replaces it only through a complete, validated write
    store.save("broken", {"enabled": True, "b1": 1.2, "preset": "Custom"})
    assert store.get("broken")["b1"] == 1.2


def test_invalid_values_are_not_written(store):
    with pytest.raises(ParamError, match="'b1'"):
        store.save("bad", {"b1": 99})
    assert not (store.folder / "bad.json").exists()


def test_failed_write_leaves_old_file(store, monkeypatch):
    store.save("keep", {"enabled": True, "b1": 1.2, "preset": "Custom"})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.save("keep", {"enabled": True, "b1": 1.4, "preset": "Custom"})
    monkeypatch.undo()
    assert store.get("keep")["b1"] == 1.2
    assert [p.name for p in store.folder.iterdir()] == ["keep.json"]


@pytest.fixture
def client(presets_dir):
    app = FastAPI()
    routes.register(app)
    routes.register(app)  # a UI reload calls app_started again: no duplicate routes
    return TestClient(app)


def test_routes(client):
    caps = client.get("/freediff/v1/version").json()
    fields = [f["name"] for f in caps["features"]["freeu"]["fields"]]
    assert fields[:10] == ["enabled", "version", "b1", "b2", "s1", "s2", "start", "end", "hires", "preset"]

    assert client.put("/freediff/v1/presets/freeu/mine", json={"values": {"enabled": True, "s2": 0.5, "preset": "Custom"}}).status_code == 200
    got = client.get("/freediff/v1/presets/freeu/mine").json()
    assert got["values"]["s2"] == 0.5
    names = [p["name"] for p in client.get("/freediff/v1/presets/freeu").json()["presets"]]
    assert "mine" in names and "SD1.5 official" in names

    bad = client.put("/freediff/v1/presets/freeu/mine", json={"values": {"s2": "x"}})
    assert bad.status_code == 422 and "'s2'" in bad.json()["detail"]
    assert client.put("/freediff/v1/presets/freeu/SD1.5 official", json={"values": {}}).status_code == 409
    assert client.put("/freediff/v1/presets/freeu/..%2Fx", json={"values": {}}).status_code in (404, 422)
    assert client.get("/freediff/v1/presets/freeu/nothing").status_code == 404
    assert client.get("/freediff/v1/presets/nofeature").status_code == 404
    assert client.delete("/freediff/v1/presets/freeu/mine").json()["deleted"] is True
    assert client.delete("/freediff/v1/presets/freeu/mine").status_code == 404
