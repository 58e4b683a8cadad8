"""FastComposer, FreeU and Any-Size Diffusion in one AUTOMATIC1111 generation (the stand-in): the subjects in the first
pass and in every tile of the hires pass, the exact size, the infotext of all three, through the UI and the API, beside
ControlNet, and nothing left behind after success, failure or interrupt."""

import pytest

import all_three
from all_three import CLEAN, FC, NEGATIVE, PROMPT
from harness import (CONTROLNET_LIKE, SCRIPT_FILES, WebUI, b64_png, image_from_b64, infotexts_of, make_image,
                     noun_positions, same_images, unet_fails_at_call, unet_interrupts_at_call)
from lib_freediff.freeu.unet import attached_hook_count
from lib_freediff.webui import runtime
from modules import shared

SIZES = [(1000, 600, 512), (301, 173, 128)]  # (width, height, tile px): 2×2 tiles of 504×304 px; 3×2 of 104×88 px


@pytest.fixture(autouse=True)
def nothing_left(sd1):
    shared.sd_model = sd1
    yield
    assert not runtime._sessions
    assert not sd1.cond_stage_model._forward_pre_hooks and not sd1.cond_stage_model._forward_hooks
    assert attached_hook_count(sd1.model.diffusion_model) == 0
    assert "decode" not in vars(sd1.first_stage_model)


def generate(webui, values, **kwargs):
    return all_three.unet_calls(lambda: webui.txt2img(all_three.ui_args(webui, values), prompt=PROMPT,
                                                      negative_prompt=NEGATIVE, steps=4, **kwargs))


@pytest.mark.parametrize("width,height,tile", SIZES)
def test_ui_exact_size_subjects_in_every_tile_and_infotext(webui, width, height, tile):
    values = all_three.settings(width, height, tile)
    res, calls = generate(webui, values)
    assert res.images[0].size == (width, height)
    rows = all_three.expected_rows(noun_positions(CLEAN, ["man", "woman"]))
    first_pass = calls[0][0]
    assert all_three.check_subjects_in_pass([c for c in calls if c[0] == first_pass], rows)["tile_calls"] == 4  # cond and uncond batched
    tiled = all_three.check_subjects_in_pass([c for c in calls if c[0] != first_pass], rows)
    assert tiled["steps"] == 4 and tiled["switch"] == 2
    assert all(n >= 4 for n in tiled["tiles_per_step"].values()), tiled  # every step: every tile (2×2 or 3×2 and more)
    info = res.infotexts[0]
    assert "FreeU: version=2" in info and f"ASD: width={width} height={height}" in info and "FastComposer: " in info
    all_three.check_infotext_round_trip(webui, info, values)


def test_api_all_three_exact_odd_size(webui):
    client = webui.api_client()
    values = all_three.settings(301, 173, 128)
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": 4, "seed": 3,
                                               "alwayson_scripts": all_three.api_scripts(values, b64_png)})
    assert r.status_code == 200, r.text[-500:]
    assert image_from_b64(r.json()["images"][0]).size == (301, 173)
    info = infotexts_of(r.json())[0]
    assert "FreeU: version=2" in info and "ASD: width=301 height=173" in info and "alpha=0.5 subjects=2" in info
    all_three.check_infotext_round_trip(webui, info, values)
    wrong = client.post("/sdapi/v1/txt2img", json={"prompt": "a man img", "steps": 2, "alwayson_scripts":
                                                   all_three.api_scripts(values, b64_png)})
    assert wrong.status_code == 422 and wrong.json()["body"] == {"feature": FC, "param": "images"}


def test_failure_and_interrupt_in_the_tiled_pass_leave_nothing(webui, bare, sd1):
    values = all_three.settings(301, 173, 128)
    unet = sd1.model.diffusion_model
    with unet_fails_at_call(unet, 12), pytest.raises(RuntimeError, match="simulated"):  # first pass: 8 calls
        generate(webui, values)
    with unet_interrupts_at_call(unet, 12):
        generate(webui, values)
    assert same_images(bare.txt2img(prompt=CLEAN, steps=2), webui.txt2img(prompt=CLEAN, steps=2))


def test_beside_controlnet(sd1):
    """A ControlNet unit (sd-webui-controlnet's stand-in, which marks every cond with its token): each tile gets its
    control and the subjects; ControlNet's hook is off afterwards."""
    webui = WebUI(script_files=SCRIPT_FILES + [CONTROLNET_LIKE], sd_model=sd1)
    values = all_three.settings(301, 173, 128)
    unit = {"image": make_image(160, 96, seed=21), "model": "control", "weight": 1.0, "module": "none"}
    args = {**all_three.ui_args(webui, values), "ControlNet": [unit]}
    res, calls = all_three.unet_calls(lambda: webui.txt2img(args, prompt=PROMPT, negative_prompt=NEGATIVE, steps=4))
    assert res.images[0].size == (301, 173)
    assert all(bool(context[:, 0].abs().eq(1024).all()) for _size, _t, context in calls)  # ControlNet's mark, in every call
    rows = all_three.expected_rows(noun_positions(CLEAN, ["man", "woman"]))
    first_pass = calls[0][0]
    tiled = all_three.check_subjects_in_pass([c for c in calls if c[0] != first_pass], rows)
    assert all(n >= 4 for n in tiled["tiles_per_step"].values())
    assert not hasattr(sd1.model.diffusion_model, "_original_forward")
    assert all(key in res.infotexts[0] for key in ("FreeU: ", "ASD: width=301 height=173", "FastComposer: "))
    without = webui.txt2img({**args, "ControlNet": [None]}, prompt=PROMPT, negative_prompt=NEGATIVE, steps=4)
    assert not same_images(res, without), "the control must act"
