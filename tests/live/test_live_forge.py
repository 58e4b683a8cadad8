"""Opt-in: the extension in a live Forge (FREEDIFF_WEBUI_URL pointing at lllyasviel/stable-diffusion-webui-forge with this
extension installed): Forge's built-in ControlNet (ControlNet and IP-Adapter units) inside Any-Size Diffusion's tiled
pass, its MultiDiffusion Integrated refused beside ours, the tile size by model family (FastComposer on either host:
test_live_fastcomposer.py). Skipped on other hosts, and per scenario when this Forge lacks what it needs. Sizes are small: a CPU
Forge runs it.

    FREEDIFF_WEBUI_URL=http://127.0.0.1:7870 bash tests/run_tests.sh tests/live
"""

import numpy as np
import pytest

from .test_live_neighbours import ASD, TARGET, TARGET_I2I, generate, get, payload, pixels, shapes_image, b64
from .test_live_webui import URL, host_name, infotext, post, refusal

pytestmark = pytest.mark.skipif(not URL, reason="set FREEDIFF_WEBUI_URL to a running WebUI to run the live suite")


@pytest.fixture(scope="module", autouse=True)
def forge():
    if host_name() != "Forge":
        pytest.skip("a Forge-only scenario")


@pytest.fixture(scope="module")
def cn_models():
    models = [m for m in get("/controlnet/model_list").json().get("model_list", []) if m != "None"]
    control = [m for m in models if "ip-adapter" not in m.lower()]
    if not control:
        pytest.skip("no ControlNet model in this Forge")
    return {"control": control, "ip": [m for m in models if "ip-adapter" in m.lower()]}


def unit(model, module="None", image_size=(640, 352), seed=3, **extra):
    """A unit of Forge's ControlNet (its API fields: lib_controlnet/external_code.py ControlNetUnit)."""
    return {"enabled": True, "module": module, "model": model, "image": b64(shapes_image(*image_size, seed=seed)),
            "weight": 1.0, "resize_mode": "Crop and Resize", "processor_res": 512, "threshold_a": -1, "threshold_b": -1,
            "guidance_start": 0.0, "guidance_end": 1.0, "pixel_perfect": False, "control_mode": "Balanced", **extra}


@pytest.fixture(scope="module")
def baselines():
    return {tab: pixels(generate(tab, payload(tab, {}))) for tab in ("txt2img", "img2img")}


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_asd_with_forge_controlnet(cn_models, baselines, tab):
    target = {"txt2img": TARGET, "img2img": TARGET_I2I}[tab]
    alone = generate(tab, payload(tab, {ASD: {"args": [target]}}))
    r = generate(tab, payload(tab, {ASD: {"args": [target]}, "ControlNet": {"args": [unit(cn_models["control"][0])]}}))
    assert pixels(r).shape == (173, 301, 3)
    assert np.abs(pixels(r) - pixels(alone)).mean() > 0.5, "the control must act in the tiled pass"
    assert "ASD: width=301 height=173" in infotext(r) and "tile=128" in infotext(r)


def test_ip_adapter_same_image_for_every_tile_batch(cn_models):
    if not cn_models["ip"]:
        pytest.skip("no IP-Adapter model in this Forge")
    ip = unit(cn_models["ip"][0], module="CLIP-ViT-H (IPAdapter)", image_size=(224, 224))
    # the first IP-Adapter generation after Forge starts differs from all later ones, whatever the tile batch (seen
    # here: 7.7 levels mean; later runs with tile batch 1 and 3 within 1 level), as on AUTOMATIC1111: warm it up
    generate("img2img", payload("img2img", {ASD: {"args": [TARGET_I2I]}, "ControlNet": {"args": [ip]}}))
    images = [pixels(generate("img2img", payload("img2img", {ASD: {"args": [{**TARGET_I2I, "tile_batch": batch}]},
                                                              "ControlNet": {"args": [ip]}})))
              for batch in (1, 3)]
    diff = np.abs(images[0] - images[1])
    assert diff.mean() < 0.05 and diff.max() <= 2, (diff.mean(), diff.max())


def test_baselines_unchanged_after_controlnet_scenarios(cn_models, baselines):
    for tab in ("txt2img", "img2img"):
        assert np.array_equal(pixels(generate(tab, payload(tab, {}))), baselines[tab]), f"{tab} changed"


def test_reference_unit_refused_naming_it(cn_models):
    ref = unit("None", module="reference_only")
    r = post("/sdapi/v1/txt2img", payload("txt2img", {ASD: {"args": [TARGET]}, "ControlNet": {"args": [ref]}}))
    refusal(r, ASD)
    assert "ControlNet unit 0" in r.json()["detail"] and "reference" in r.json()["detail"]
    generate("txt2img", payload("txt2img", {}))  # the next generation runs


def test_multidiffusion_integrated_beside_ours_is_refused():
    r = post("/sdapi/v1/img2img", payload("img2img", {ASD: {"args": [TARGET_I2I]},
                                                      "MultiDiffusion Integrated": {"args": [True, "MultiDiffusion", 768, 768, 64, 4]}}))
    refusal(r, ASD)
    assert "MultiDiffusion Integrated" in r.json()["detail"]


def test_tile_auto_is_the_models_native_size():
    r = generate("img2img", payload("img2img", {ASD: {"args": [{**TARGET_I2I, "tile": "auto", "width": 264, "height": 200}]}}))
    assert "tile=512" in infotext(r) and pixels(r).shape == (200, 264, 3)  # SD1.5: one 512-px tile covers it
