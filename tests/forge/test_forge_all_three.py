"""FastComposer, FreeU and Any-Size Diffusion in one Forge generation (its stand-in): the subjects in the first pass and
in every tile call of the hires pass (Forge's sampling function hands the tiler the rows of the cond the CFG callback
left), the exact size, the infotext of all three, through the UI and the API, beside Forge's ControlNet, and nothing left
on the model or its patchers after success, failure or interrupt."""

import pytest

import all_three
from all_three import CLEAN, FC, NEGATIVE, PROMPT
from harness import (FORGE_CONTROLNET_LIKE, SCRIPT_FILES, WebUI, b64_png, image_from_b64, infotexts_of, make_image,
                     noun_positions, same_images, unet_fails_at_call, unet_interrupts_at_call)
from lib_freediff.freeu.unet import FreeUBlockPatch
from lib_freediff.webui import host, runtime
from lib_freediff.webui.forge.tiling import ForgeTiledUNet
from modules import shared

SIZES = [(1000, 600, 512), (301, 173, 128)]  # (width, height, tile px): 2×2 tiles of 504×304 px; 3×2 of 104×88 px


@pytest.fixture(scope="module")
def webui(forge_fc_sd1):
    return WebUI(sd_model=forge_fc_sd1)


@pytest.fixture(scope="module")
def bare(forge_fc_sd1):
    return WebUI(script_files=[], sd_model=forge_fc_sd1)


def ours_on(patcher) -> bool:
    options = patcher.model_options
    patches = options.get("transformer_options", {}).get("patches", {}).get("output_block_patch", [])
    return isinstance(options.get("model_function_wrapper"), ForgeTiledUNet) or any(isinstance(p, FreeUBlockPatch) for p in patches)


@pytest.fixture(autouse=True)
def nothing_left(forge_fc_sd1):
    shared.sd_model = forge_fc_sd1
    yield
    assert not runtime._sessions
    assert "get_learned_conditioning" not in vars(forge_fc_sd1)
    for objects in (forge_fc_sd1.forge_objects, forge_fc_sd1.forge_objects_original, forge_fc_sd1.forge_objects_after_applying_lora):
        assert not ours_on(objects.unet)
        assert "model_vae_decode_wrapper" not in objects.vae.patcher.model_options


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
    assert all_three.check_subjects_in_pass([c for c in calls if c[0] == first_pass], rows)["tile_calls"] == 4
    tiled = all_three.check_subjects_in_pass([c for c in calls if c[0] != first_pass], rows)
    assert tiled["steps"] == 4 and tiled["switch"] == 2
    assert all(n >= 4 for n in tiled["tiles_per_step"].values()), tiled
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
    assert wrong.status_code == 422 and wrong.json()["detail"].startswith(f"{FC}: parameter 'images'")


def test_failure_and_interrupt_in_the_tiled_pass_leave_nothing(webui, bare, forge_fc_sd1):
    values = all_three.settings(301, 173, 128)
    unet = host.current().unet(forge_fc_sd1)
    with unet_fails_at_call(unet, 12), pytest.raises(RuntimeError, match="simulated"):  # first pass: 4 calls
        generate(webui, values)
    with unet_interrupts_at_call(unet, 12):
        generate(webui, values)
    assert same_images(bare.txt2img(prompt=CLEAN, steps=2), webui.txt2img(prompt=CLEAN, steps=2))


def test_beside_forges_controlnet(forge_fc_sd1):
    """A unit of Forge's ControlNet: every tile call gets its control (computed per tile call) and the subjects."""
    webui = WebUI(script_files=SCRIPT_FILES + [FORGE_CONTROLNET_LIKE], sd_model=forge_fc_sd1)
    values = all_three.settings(301, 173, 128)
    args = {**all_three.ui_args(webui, values), "ControlNet": [{"image": make_image(160, 96, seed=21), "model": "control"}]}
    res, calls = all_three.unet_calls(lambda: webui.txt2img(args, prompt=PROMPT, negative_prompt=NEGATIVE, steps=4))
    assert res.images[0].size == (301, 173)
    rows = all_three.expected_rows(noun_positions(CLEAN, ["man", "woman"]))
    first_pass = calls[0][0]
    tiled = all_three.check_subjects_in_pass([c for c in calls if c[0] != first_pass], rows)
    assert all(n >= 4 for n in tiled["tiles_per_step"].values())
    assert all(key in res.infotexts[0] for key in ("FreeU: ", "ASD: width=301 height=173", "FastComposer: "))
    without = webui.txt2img({**args, "ControlNet": [None]}, prompt=PROMPT, negative_prompt=NEGATIVE, steps=4)
    assert not same_images(res, without), "the control must act"
