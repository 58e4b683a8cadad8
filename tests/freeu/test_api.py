"""FreeU through the HTTP API (/sdapi/v1/txt2img, img2img with alwayson_scripts): image and infotext out."""

import pytest

from harness import WebUI, b64_png, image_from_b64, infotexts_of, make_image
from lib_freediff.freeu.unet import attached_hook_count
from lib_freediff.webui import runtime
from modules import shared
from tiny_sd import TinySD


@pytest.fixture(scope="module")
def client():
    shared.sd_model = TinySD("sd1", context_dim=64)
    return WebUI().api_client()


def txt2img(client, args, **extra):
    payload = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 5, **extra}
    if args is not None:
        payload["alwayson_scripts"] = {"freeu": {"args": args}}
    return client.post("/sdapi/v1/txt2img", json=payload)


def test_dict_form_named_fields(client):
    r = txt2img(client, [{"enabled": True, "b1": 1.2, "s2": 0.5}])
    assert r.status_code == 200, r.text
    info = infotexts_of(r.json())[0]
    assert "FreeU: version=2 b1=1.2 b2=1.6 s1=0.9 s2=0.5 preset=Custom" in info
    assert image_from_b64(r.json()["images"][0]).size == (64, 64)


def test_dict_form_defaults_match_ui(client):
    ui = txt2img(client, [True])
    named = txt2img(client, [{"enabled": True}])
    assert infotexts_of(ui.json()) == infotexts_of(named.json())
    assert ui.json()["images"] == named.json()["images"]


def test_list_form_positional(client):
    r = txt2img(client, [True, 1, 1.3, 1.4, 0.9, 0.2, 0.0, 1.0, True, "SDXL"])
    assert r.status_code == 200
    assert "FreeU: version=1 b1=1.3 b2=1.4 s1=0.9 s2=0.2 preset=SDXL" in infotexts_of(r.json())[0]


def test_disabled_via_api_adds_nothing(client):
    r = txt2img(client, [{"enabled": False, "b1": 2.0}])
    base = txt2img(client, None)
    assert "FreeU" not in infotexts_of(r.json())[0]
    assert r.json()["images"] == base.json()["images"]


@pytest.mark.parametrize("args,field", [
    ([{"enabled": True, "b1": "high"}], "b1"),
    ([{"enabled": True, "b2": 7}], "b2"),
    ([{"enabled": True, "version": 3}], "version"),
    ([{"enabled": True, "start": 0.8, "end": 0.2}], "end"),
    ([{"enabled": True, "preset": "SD9"}], "preset"),
    ([{"enabled": True, "preset": "SDXL", "b1": 1.2}], "b1"),
    ([{"enabled": True, "bogus": 1}], "bogus"),
    ([True, 2, "x"], "b1"),
    ([True, 2, 1.5, 1.6, 0.9, 0.2, 0.0, 1.0, "maybe"], "hires"),
])
def test_bad_values_name_the_field_and_break_nothing(client, args, field):
    r = txt2img(client, args)
    assert r.status_code == 422, r.text
    assert f"parameter '{field}'" in r.json()["errors"]
    assert attached_hook_count(shared.sd_model.model.diffusion_model) == 0
    assert not runtime._sessions
    # the next generation is unaffected
    ok = txt2img(client, None)
    assert ok.status_code == 200 and "FreeU" not in infotexts_of(ok.json())[0]


def test_img2img_api(client):
    r = client.post("/sdapi/v1/img2img", json={
        "prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 5, "denoising_strength": 0.5,
        "init_images": [b64_png(make_image())], "alwayson_scripts": {"FreeU": {"args": [{"enabled": True, "preset": "SD2.1"}]}}})
    assert r.status_code == 200, r.text
    assert "preset=SD2.1" in infotexts_of(r.json())[0] and "b1=1.4" in infotexts_of(r.json())[0]


def test_positional_values_are_never_silently_replaced(client):
    """The WebUI pads a short list with the panel's values and preset 'Auto'; the factors given win."""
    given = txt2img(client, [True, 2, 1.1, 1.2, 0.5, 0.5])  # preset left out, as the README allows
    assert given.status_code == 200, given.text
    assert "FreeU: version=2 b1=1.1 b2=1.2 s1=0.5 s2=0.5 preset=Custom" in infotexts_of(given.json())[0]
    # another family's official values, given on an SD1.5 model, are the caller's too
    sd14 = txt2img(client, [True, 2, 1.3, 1.4, 0.9, 0.2])
    assert "FreeU: version=2 b1=1.3 b2=1.4 s1=0.9 s2=0.2 preset=Custom" in infotexts_of(sd14.json())[0]
    custom = txt2img(client, [True, 2, 1.1, 1.2, 0.5, 0.5, 0.0, 1.0, True, "Custom"])
    assert custom.json()["images"] == given.json()["images"]
    # the padding alone (the defaults) keeps Auto: the loaded family's values
    auto = txt2img(client, [True])
    assert "b1=1.5 b2=1.6 s1=0.9 s2=0.2 preset=SD1.5" in infotexts_of(auto.json())[0]
    assert auto.json()["images"] != given.json()["images"]


def test_positional_padding_keeps_auto_on_another_family(client):
    sd1 = shared.sd_model
    shared.sd_model = TinySD("sdxl")
    try:
        r = txt2img(client, [True, 2])
        assert r.status_code == 200, r.text
        assert "b1=1.3 b2=1.4 s1=0.9 s2=0.2 preset=SDXL" in infotexts_of(r.json())[0]
    finally:
        shared.sd_model = sd1


def test_positional_family_preset_with_other_values_is_refused(client):
    r = txt2img(client, [True, 2, 1.1, 1.6, 0.9, 0.2, 0.0, 1.0, True, "SD1.5"])
    assert r.status_code == 422, r.text
    assert "parameter 'b1': is 1.1 but preset 'SD1.5' sets b1=1.5" in r.json()["errors"]
    assert r.json()["body"] == {"feature": "FreeU", "param": "b1"}
    ok = txt2img(client, [True, 2, 1.5, 1.6, 0.9, 0.2, 0.0, 1.0, True, "SD1.5"])
    assert ok.status_code == 200 and "preset=SD1.5" in infotexts_of(ok.json())[0]
