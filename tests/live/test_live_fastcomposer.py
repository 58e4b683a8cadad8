"""Opt-in: FastComposer in a live WebUI of either host, with a FastComposer model in ``models/fastcomposer`` and its
converted checkpoint (``python -m lib_freediff.fastcomposer convert``) among the checkpoints: α = 0 is the host's own
image of the marker-free prompt, the subjects change it, wrong marker counts are refused naming the field, and the three
features run together to an exact odd size. Skipped when the WebUI lacks the model or the checkpoint.

    FREEDIFF_WEBUI_URL=http://127.0.0.1:7860 bash tests/run_tests.sh tests/live/test_live_fastcomposer.py
"""

import numpy as np
import pytest

from .test_live_neighbours import ASD, INIT, generate, get, pixels
from .test_live_webui import URL, host_name, infotext, post, refusal

pytestmark = pytest.mark.skipif(not URL, reason="set FREEDIFF_WEBUI_URL to a running WebUI to run the live suite")

FC = "FastComposer"
PROMPT, CLEAN = "a man img on a beach, photo", "a man on a beach, photo"


@pytest.fixture(scope="module")
def base():
    """A request on the FastComposer checkpoint (its title starts with "fastcomposer"), restored afterwards."""
    found = [m["title"] for m in get("/sdapi/v1/sd-models").json() if m["title"].lower().startswith("fastcomposer")]
    if not found:
        pytest.skip("no converted FastComposer checkpoint in this WebUI")
    probe = post("/sdapi/v1/txt2img", {"prompt": "a man img", "steps": 1, "width": 64, "height": 64,
                                       "alwayson_scripts": {FC: {"args": [{"enabled": True, "images": []}]}}})
    if "no FastComposer model" in probe.text:
        pytest.skip("no FastComposer model in this WebUI's models/fastcomposer")
    return {"negative_prompt": "blurry", "steps": 3, "width": 256, "height": 256, "seed": 5, "sampler_name": "Euler",
            "cfg_scale": 6, "override_settings": {"sd_model_checkpoint": found[0]}, "override_settings_restore_afterwards": True}


def subjects(alpha=0.7, images=(INIT,)):
    return {FC: {"args": [{"enabled": True, "images": list(images), "alpha": alpha}]}}


def test_alpha_zero_is_the_hosts_own_image_of_the_marker_free_prompt(base):
    plain = generate("txt2img", {**base, "prompt": CLEAN})
    zero = generate("txt2img", {**base, "prompt": PROMPT, "alwayson_scripts": subjects(alpha=0.0)})
    assert np.array_equal(pixels(plain), pixels(zero))
    assert "FastComposer: " in infotext(zero) and "alpha=0 " in infotext(zero)


def test_subjects_change_the_image(base):
    plain = generate("txt2img", {**base, "prompt": CLEAN})
    fused = generate("txt2img", {**base, "prompt": PROMPT, "alwayson_scripts": subjects()})
    assert not np.array_equal(pixels(plain), pixels(fused))  # one token of 77 changes: with random weights, by little
    assert "subjects=1 model_hash=" in infotext(fused)


def test_wrong_marker_count_is_refused(base):
    refusal(post("/sdapi/v1/txt2img", {**base, "prompt": "a man img and a woman img", "alwayson_scripts": subjects()}), FC, "images")


def test_all_three_to_an_exact_odd_size(base):
    scripts = {**subjects(alpha=0.5), "FreeU": {"args": [{"enabled": True}]},
               ASD: {"args": [{"enabled": True, "width": 301, "height": 173, "tile": 128, "offset_range": 64, "steps": 2,
                               "denoise": 0.6}]}}
    r = generate("txt2img", {**base, "prompt": PROMPT, "steps": 2, "alwayson_scripts": scripts})
    assert pixels(r).shape == (173, 301, 3)
    info = infotext(r)
    assert all(key in info for key in ("FastComposer: ", "FreeU: version=2", "ASD: width=301 height=173"))


def test_all_three_beside_the_hosts_controlnet(base):
    """A unit of the host's own ControlNet (sd-webui-controlnet on AUTOMATIC1111, the built-in one on Forge) changes the
    three-together image; 301×173 has a first pass of the hires pass's height (312×176, 304×176)."""
    models = [m for m in get("/controlnet/model_list").json().get("model_list", []) if m != "None" and "ip-adapter" not in m.lower()]
    if not models:
        pytest.skip("no ControlNet model in this WebUI")
    if host_name() == "Forge":
        from .test_live_forge import unit
    else:
        from .test_live_neighbours import unit
    asd = {"enabled": True, "width": 301, "height": 173, "tile": 128, "offset_range": 64, "steps": 2, "denoise": 0.6}
    scripts = {**subjects(alpha=0.5), "FreeU": {"args": [{"enabled": True}]}, ASD: {"args": [asd]}}
    three = generate("txt2img", {**base, "prompt": PROMPT, "steps": 2, "alwayson_scripts": scripts})
    with_cn = generate("txt2img", {**base, "prompt": PROMPT, "steps": 2, "alwayson_scripts": {
        **scripts, "ControlNet": {"args": [unit(models[0], image_size=(256, 256))]}}})
    assert pixels(with_cn).shape == (173, 301, 3)
    assert np.abs(pixels(with_cn) - pixels(three)).mean() > 0.5
