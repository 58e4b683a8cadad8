"""FastComposer through the HTTP API (alwayson_scripts, base64 subject images), the /freediff/v1 routes,
and the XYZ plot axis."""

import base64
import os
import types
from contextlib import closing
from copy import copy

import pytest
import torch

from harness import WebUI, b64_png, image_from_b64, infotexts_of, make_image
from lib_freediff.webui import runtime
from modules import paths, processing, scripts, shared
from modules.sd_hijack_clip import Embedding, EmbeddingDatabase
from tiny_sd import TinySD

PROMPT = "a man img and a woman img at the beach"
IMAGES = [b64_png(make_image(48, 64, seed=11)), "data:image/png;base64," + b64_png(make_image(64, 40, seed=12))]


@pytest.fixture(scope="module")
def client(sd1):
    shared.sd_model = sd1
    return WebUI().api_client()


def txt2img(client, args, key="FastComposer", **extra):
    payload = {"prompt": PROMPT, "steps": 3, "width": 64, "height": 64, "seed": 5, **extra}
    if args is not None:
        payload["alwayson_scripts"] = {key: {"args": args}}
    return client.post("/sdapi/v1/txt2img", json=payload)


def test_named_fields(client):
    r = txt2img(client, [{"enabled": True, "model": "fastcomposer.safetensors", "images": IMAGES, "alpha": 0.6, "hires": False}])
    assert r.status_code == 200, r.text[-500:]
    info = infotexts_of(r.json())[0]
    assert "FastComposer: model=fastcomposer.safetensors alpha=0.6 hires=false subjects=2 model_hash=" in info
    assert IMAGES[0][:40] not in info
    assert image_from_b64(r.json()["images"][0]).size == (64, 64)


def test_omitted_fields_take_the_ui_defaults_and_positional_form(client):
    named = txt2img(client, [{"enabled": True, "images": IMAGES}], key="fastcomposer")
    positional = txt2img(client, [True, "fastcomposer.safetensors", IMAGES, 0.7, True])
    assert named.status_code == 200 and positional.status_code == 200, (named.text[-500:], positional.text[-500:])
    assert infotexts_of(named.json()) == infotexts_of(positional.json())
    assert named.json()["images"] == positional.json()["images"]
    assert "alpha=0.7 subjects=2" in infotexts_of(named.json())[0]
    # a model named by its stem, images as a data URL: the same generation
    stem = txt2img(client, [{"enabled": True, "model": "fastcomposer", "images": IMAGES}])
    assert stem.json()["images"] == named.json()["images"]


def test_positional_values_given_are_the_values_used(client):
    """Audit of the positional form: nothing the caller gives is replaced by a default or another field."""
    r = txt2img(client, [True, "fastcomposer", IMAGES, 0.55, False], enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1)
    assert r.status_code == 200, r.text[-500:]
    info = infotexts_of(r.json())[0]
    assert "FastComposer: model=fastcomposer.safetensors alpha=0.55 hires=false subjects=2" in info
    # a value out of place (the images where the model goes) is refused naming the field, without echoing the images
    r = txt2img(client, [True, IMAGES])
    assert r.status_code == 422 and r.json()["body"] == {"feature": "FastComposer", "param": "model"}
    assert "parameter 'model': expected a name (text), got a list" in r.json()["errors"]
    assert len(r.json()["errors"]) < 300


def test_disabled_via_api_adds_nothing(client):
    r = txt2img(client, [{"enabled": False, "images": IMAGES}])
    base = txt2img(client, None)
    assert "FastComposer" not in infotexts_of(r.json())[0]
    assert r.json()["images"] == base.json()["images"]


@pytest.mark.parametrize("args,field", [
    ([{"enabled": True, "images": ["not base64 !!"]}], "images"),
    ([{"enabled": True, "images": [base64.b64encode(b"a text, not an image").decode(), IMAGES[1]]}], "images"),
    ([{"enabled": True, "images": [IMAGES[0], base64.b64encode(base64.b64decode(IMAGES[0])[:400]).decode()]}], "images"),
    ([{"enabled": True, "images": [b64_png(make_image()).replace("i", "I")[:200]]}], "images"),
    ([{"enabled": True, "images": "x" * 10}], "images"),
    ([{"enabled": True, "images": {"a": 1}}], "images"),
    ([{"enabled": True, "images": IMAGES[:1]}], "images"),          # 2 marked nouns, 1 image
    ([{"enabled": True, "images": IMAGES * 3}], "images"),          # more than 4
    ([{"enabled": True}], "images"),                                # none
    ([{"enabled": True, "images": IMAGES, "alpha": 2}], "alpha"),
    ([{"enabled": True, "images": IMAGES, "alpha": "most"}], "alpha"),
    ([{"enabled": True, "images": IMAGES, "model": "../../etc/passwd"}], "model"),
    ([{"enabled": True, "images": IMAGES, "hires": "maybe"}], "hires"),
    ([{"enabled": True, "images": IMAGES, "strength": 1}], "strength"),
    ([True, "fastcomposer.safetensors", IMAGES, "x"], "alpha"),
])
def test_bad_values_name_the_field_and_break_nothing(client, args, field):
    r = txt2img(client, args)
    assert r.status_code == 422, r.text[-500:]
    assert f"parameter '{field}'" in r.json()["errors"]
    assert r.json()["body"] == {"feature": "FastComposer", "param": field}
    assert not runtime._sessions
    clip = shared.sd_model.cond_stage_model
    assert not clip._forward_pre_hooks and not clip._forward_hooks
    ok = txt2img(client, None)
    assert ok.status_code == 200 and "FastComposer" not in infotexts_of(ok.json())[0]


def _assert_refused(r, message, field):
    assert r.status_code == 422, r.text[-500:]
    assert message in r.json()["errors"], r.json()["errors"]
    assert r.json()["body"] == ({"feature": "FastComposer", "param": field} if field else {"feature": "FastComposer"})
    assert not runtime._sessions


def test_refusals_before_and_during_the_generation_are_422(client, monkeypatch):
    """Refused in the script's process (prompt, loaded model), in the text encoder's hook (the prompt's layout)
    and in the CFG denoiser callback (the fusion): each a 422 naming the feature and, where there is one, the field."""
    on = [{"enabled": True, "images": IMAGES[:1]}]
    _assert_refused(txt2img(client, on, prompt="a man img img"), "parameter 'prompt': the subject marker 'img'", "prompt")
    sd1 = shared.sd_model
    monkeypatch.setattr(shared, "sd_model", TinySD("sdxl", context_dim=64))
    _assert_refused(txt2img(client, on, prompt="a man img"), "parameter 'model': FastComposer's model needs an SD1.5 model", "model")
    monkeypatch.setattr(shared, "sd_model", sd1)
    # a textual-inversion embedding of no vectors swallows its marked name: found while the WebUI encodes the prompt
    clip = sd1.cond_stage_model
    db = EmbeddingDatabase()
    db.register_embedding(Embedding(torch.zeros(0, 32), "zqxnothing"), clip)
    monkeypatch.setattr(clip.hijack, "embedding_db", db)
    _assert_refused(txt2img(client, on, prompt="a photo of zqxnothing img"), "parameter 'prompt': could not place marked word", "prompt")
    monkeypatch.undo()
    from lib_freediff.fastcomposer.model import FastComposerModel

    def out_of_memory(self, *args):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(FastComposerModel, "fuse", out_of_memory)
    _assert_refused(txt2img(client, [{"enabled": True, "images": IMAGES, "alpha": 1.0}]),
                    "FastComposer: could not fuse the subjects: RuntimeError: CUDA out of memory (simulated)", None)
    monkeypatch.undo()
    ok = txt2img(client, [{"enabled": True, "images": IMAGES}])
    assert ok.status_code == 200 and "subjects=2" in infotexts_of(ok.json())[0]


def test_model_refusals_name_the_folder_relative_to_the_webui(client, model_files, monkeypatch):
    """API clients see models/fastcomposer, never the server's absolute paths."""
    unknown = txt2img(client, [{"enabled": True, "images": IMAGES, "model": "nope.bin"}])
    assert unknown.status_code == 422, unknown.text[-500:]
    assert unknown.json()["errors"] == ("FastComposer: parameter 'model': 'nope.bin' is not a model in models/fastcomposer; "
                                        "available: fastcomposer.safetensors, pytorch_model.bin")
    broken = os.path.join(model_files, "zz-broken.bin")
    with open(broken, "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4520000000\n")
    try:
        r = txt2img(client, [{"enabled": True, "images": IMAGES, "model": "zz-broken.bin"}])
    finally:
        os.remove(broken)
    assert r.status_code == 422 and r.json()["body"] == {"feature": "FastComposer", "param": "model"}, r.text[-500:]
    assert r.json()["errors"].startswith("FastComposer: parameter 'model': models/fastcomposer/zz-broken.bin: a Git LFS pointer")
    monkeypatch.setattr(paths, "models_path", os.path.join(paths.data_path, "no-models"))
    empty = txt2img(client, [{"enabled": True, "images": IMAGES}])
    assert empty.status_code == 422
    assert ("parameter 'model': no FastComposer model in no-models/fastcomposer: download pytorch_model.bin from "
            "https://huggingface.co/mit-han-lab/fastcomposer into it") in empty.json()["errors"]
    for answer in (unknown, r, empty):
        assert paths.data_path not in answer.text and model_files not in answer.text


def test_img2img_api(client):
    r = client.post("/sdapi/v1/img2img", json={
        "prompt": PROMPT, "steps": 3, "width": 64, "height": 64, "seed": 5, "denoising_strength": 0.5,
        "init_images": [b64_png(make_image())],
        "alwayson_scripts": {"FastComposer": {"args": [{"enabled": True, "images": IMAGES, "alpha": 0.8}]}}})
    assert r.status_code == 200, r.text[-500:]
    assert "alpha=0.8 subjects=2" in infotexts_of(r.json())[0]


def test_capabilities_and_presets_routes(client, presets_dir):
    caps = client.get("/freediff/v1/version").json()
    fields = caps["features"]["fastcomposer"]["fields"]
    assert [f["name"] for f in fields] == ["enabled", "model", "images", "alpha", "hires"]
    assert {f["name"]: f["default"] for f in fields}["alpha"] == 0.7
    listed = client.get("/freediff/v1/presets/fastcomposer").json()["presets"]
    assert {p["name"] for p in listed} >= {"Balanced (alpha 0.7)", "Identity (alpha 0.8)", "Editable (alpha 0.6)"}
    ok = client.put("/freediff/v1/presets/fastcomposer/mine", json={"values": {"enabled": True, "alpha": 0.65}})
    assert ok.status_code == 200 and ok.json()["values"] == {"enabled": True, "alpha": 0.65, "hires": True}
    # presets hold settings, never subject images
    bad = client.put("/freediff/v1/presets/fastcomposer/pics", json={"values": {"images": IMAGES}})
    assert bad.status_code == 422 and "parameter 'images'" in bad.json()["detail"]
    assert client.get("/freediff/v1/presets/fastcomposer/mine").json()["values"]["alpha"] == 0.65


class AxisOption:
    """xyz_grid.AxisOption's constructor signature (v1.10.1)."""

    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply, self.choices = label, type, apply, choices


def test_xyz_alpha_axis(monkeypatch, sd1):
    module = types.SimpleNamespace(axis_options=[], AxisOption=AxisOption,
                                   boolean_choice=lambda reverse=False: lambda: ["False", "True"] if reverse else ["True", "False"])
    cls = type("Script", (scripts.Script,), {"__module__": "xyz_grid.py"})
    monkeypatch.setattr(scripts, "scripts_data", [scripts.ScriptClassData(cls, "xyz_grid.py", "", module)])
    webui = WebUI(sd_model=sd1)
    by_label = {o.label: o for o in module.axis_options}
    assert "[FastComposer] Alpha (α)" in by_label and "[FastComposer] Enable FastComposer" in by_label
    images = [make_image(48, 64, seed=11), make_image(64, 40, seed=12)]
    p = processing.StableDiffusionProcessingTxt2Img(scripts=webui.runners["txt2img"], prompt=PROMPT, steps=2, width=64, height=64, seed=1,
                                                    script_args=webui.script_args("txt2img", {"FastComposer": [True, "", images]}))
    cells = []
    for value in (0.5, 0.9):
        pc = copy(p)
        by_label["[FastComposer] Alpha (α)"].apply(pc, value, None)
        webui.activate()
        with closing(pc):
            cells.append(processing.process_images(pc).infotexts[0])
    assert "alpha=0.5 " in cells[0] and "alpha=0.9 " in cells[1]
    bad = copy(p)
    by_label["[FastComposer] Alpha (α)"].apply(bad, 3.0, None)
    with pytest.raises(Exception, match="parameter 'alpha'"), closing(bad):
        processing.process_images(bad)
    assert not runtime._sessions
