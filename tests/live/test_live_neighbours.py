"""Opt-in: the extension beside what WebUI users run with it, in a live WebUI v1.10.1 (FREEDIFF_WEBUI_URL):
sd-webui-controlnet (ControlNet and IP-Adapter units) inside Any-Size Diffusion's tiled pass, refusals as 4xx,
SDXL checkpoints, FastComposer beside ControlNet. Each scenario is skipped when the WebUI lacks what it needs
(ControlNet and its models, an SDXL checkpoint, a FastComposer model). Sizes are small: a CPU WebUI runs it.

    FREEDIFF_WEBUI_URL=http://127.0.0.1:7860 bash tests/run_tests.sh tests/live
"""

import base64
import io

import numpy as np
import pytest

from .test_live_webui import URL, host_name, image, infotext, post, refusal

pytestmark = pytest.mark.skipif(not URL, reason="set FREEDIFF_WEBUI_URL to a running WebUI to run the live suite")


ASD = "Any-Size Diffusion"
# 301×173 px with the smallest tile (128 px): a 3×2 grid of 13×11 latent px in the tiled pass
# (first pass from small custom buckets: 256×128 for this ratio, cheap on a CPU)
TARGET = {"enabled": True, "width": 301, "height": 173, "tile": 128, "offset_range": 64, "overlap": 64, "steps": 3,
          "denoise": 0.5, "upscaler": "Latent", "buckets": "256x128, 192x192, 128x256"}
# img2img renders the target directly: ASD's first-pass and upscale fields are refused there
TARGET_I2I = {k: v for k, v in TARGET.items() if k not in ("buckets", "upscaler", "denoise", "steps")}
TARGETS = {"txt2img": TARGET, "img2img": TARGET_I2I}
BASE = {"prompt": "a lighthouse on a cliff, photo", "negative_prompt": "blurry", "steps": 4, "width": 256, "height": 256,
        "seed": 77, "sampler_name": "Euler", "cfg_scale": 6}


def get(path):
    import httpx

    return httpx.get(f"{URL}{path}", timeout=60)


def b64(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def shapes_image(w, h, seed=0):
    """A control image with edges (ellipses and bars) of any size."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), (0, 0, 0))
    d = ImageDraw.Draw(im)
    for _ in range(4):
        x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        d.ellipse((x0, y0, x0 + w // 3, y0 + h // 3), outline=(255, 255, 255), width=4)
    d.rectangle((w // 8, h // 2, w // 2, h // 2 + 12), fill=(255, 255, 255))
    return im


def pixels(response, i=0):
    return np.asarray(image(response.json()["images"][i]).convert("RGB"), dtype=np.int16)


def generate(tab, payload):
    r = post(f"/sdapi/v1/{tab}", payload)
    assert r.status_code == 200, r.text[-800:]
    return r


INIT = b64(shapes_image(301, 173, seed=9).convert("L").convert("RGB"))


def payload(tab, scripts, **extra):
    p = {**BASE, "alwayson_scripts": scripts, **extra}
    if tab == "img2img":
        p.update(init_images=[INIT], denoising_strength=0.5, width=301, height=173)
    return p


# -- ControlNet ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cn_models():
    if host_name() == "Forge":
        pytest.skip("sd-webui-controlnet's units; Forge's built-in ControlNet is in test_live_forge.py")
    r = get("/controlnet/model_list")
    if r.status_code != 200:
        pytest.skip("no sd-webui-controlnet in this WebUI")
    models = [m for m in r.json().get("model_list", []) if m != "None"]
    control = [m for m in models if "ip-adapter" not in m.lower() and "sd15" in m.lower()]
    if not control:
        pytest.skip("no SD1.5 ControlNet model in this WebUI")
    return {"control": control, "ip": [m for m in models if "ip-adapter" in m.lower()]}


def unit(model, pixel_perfect=False, image_size=(640, 352), seed=3, **extra):
    return {"enabled": True, "module": "none", "model": model, "image": b64(shapes_image(*image_size, seed=seed)),
            "weight": 1.0, "pixel_perfect": pixel_perfect, "resize_mode": "Crop and Resize", "control_mode": "Balanced",
            "processor_res": 512, **extra}


@pytest.fixture(scope="module")
def baselines():
    """Plain txt2img and img2img, before the ControlNet scenarios (compared with the same after them)."""
    return {tab: pixels(generate(tab, payload(tab, {}))) for tab in ("txt2img", "img2img")}


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
@pytest.mark.parametrize("mode", ["implicit", "explicit", "none"])
def test_asd_with_controlnet_units(cn_models, baselines, tab, mode):
    alone = generate(tab, payload(tab, {ASD: {"args": [{**TARGETS[tab], "mode": mode}]}}))
    first = cn_models["control"][0]
    second = cn_models["control"][-1]
    for units in ([unit(first, pixel_perfect=True)], [unit(first), unit(second, pixel_perfect=True, image_size=(97, 203), seed=4)]):
        r = generate(tab, payload(tab, {ASD: {"args": [{**TARGETS[tab], "mode": mode}]}, "ControlNet": {"args": units}}))
        out = pixels(r)
        assert out.shape == (173, 301, 3)
        assert np.abs(out - pixels(alone)).mean() > 0.5, "the control must act in the tiled pass"
        assert f"mode={mode}" in infotext(r) or mode == "implicit"


def test_baselines_unchanged_after_controlnet_scenarios(cn_models, baselines):
    for tab in ("txt2img", "img2img"):
        assert np.array_equal(pixels(generate(tab, payload(tab, {}))), baselines[tab]), f"{tab} changed"


def test_ip_adapter_same_image_for_every_tile_batch(cn_models):
    if not cn_models["ip"]:
        pytest.skip("no IP-Adapter model in this WebUI")
    ip = {**unit(cn_models["ip"][0], image_size=(224, 224)), "module": "ip-adapter_clip_sd15"}
    images = []
    # the first IP-Adapter generation after the server starts differed from the later ones even at identical U-Net
    # calls (ControlNet v1.1.455, CPU), so one run warms it up before the comparison
    generate("img2img", payload("img2img", {ASD: {"args": [TARGET_I2I]}, "ControlNet": {"args": [ip]}}))
    for tile_batch in (1, 3, 4):
        r = generate("img2img", payload("img2img", {ASD: {"args": [{**TARGET_I2I, "tile_batch": tile_batch}]}, "ControlNet": {"args": [ip]}}))
        images.append(pixels(r))
    for other in images[1:]:
        diff = np.abs(images[0] - other)
        assert diff.mean() < 0.05 and diff.max() <= 2, (diff.mean(), diff.max())


def test_untileable_unit_is_refused_naming_it(cn_models):
    ref = {**unit("None"), "module": "reference_only"}
    r = post("/sdapi/v1/txt2img", payload("txt2img", {ASD: {"args": [TARGET]}, "ControlNet": {"args": [ref]}}))
    refusal(r, ASD)
    assert "ControlNet unit 1" in r.json()["detail"] and "reference" in r.json()["detail"]
    generate("txt2img", payload("txt2img", {}))  # the next generation runs


def test_freeu_with_controlnet(cn_models):
    base = payload("txt2img", {"ControlNet": {"args": [unit(cn_models["control"][0], image_size=(256, 256))]}})
    plain = pixels(generate("txt2img", base))
    freeu = pixels(generate("txt2img", {**base, "alwayson_scripts": {**base["alwayson_scripts"], "FreeU": {"args": [{"enabled": True}]}}}))
    assert np.abs(plain - freeu).mean() > 0.5


# -- refusals as 4xx in this WebUI's stack (run the suite once under anyio 3 and once under anyio 4) ----------------

@pytest.mark.parametrize("script,args,field", [
    ("FreeU", {"enabled": True, "b1": "lots"}, "b1"),
    (ASD, {**TARGET, "width": -5}, "width"),
    ("FastComposer", {"enabled": True, "model": "no-such-model", "images": [INIT]}, "model"),
    ("FastComposer", {"enabled": True, "images": ["bm90IGFuIGltYWdl"]}, "images"),
])
def test_refusals_are_4xx_naming_the_field(script, args, field):
    r = post("/sdapi/v1/txt2img", {**BASE, "steps": 2, "prompt": "a man img", "alwayson_scripts": {script: {"args": [args]}}})
    refusal(r, script, field)


# -- SDXL -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sdxl():
    models = [m["title"] for m in get("/sdapi/v1/sd-models").json() if "xl" in m["title"].lower()]
    if not models:
        pytest.skip("no SDXL checkpoint in this WebUI")
    # live previews off: the SDXL preview model (vaeapprox-sdxl.pt) is downloaded on first use, and tests are offline
    return {"sd_model_checkpoint": models[0], "live_previews_enable": False}


def test_sdxl_freeu_and_asd(sdxl):
    xl = {**BASE, "width": 256, "height": 256, "steps": 3, "override_settings": sdxl,
          "override_settings_restore_afterwards": True}
    plain = generate("txt2img", xl)
    freeu = generate("txt2img", {**xl, "alwayson_scripts": {"FreeU": {"args": [{"enabled": True}]}}})
    assert "preset=SDXL" in infotext(freeu)
    assert np.abs(pixels(plain) - pixels(freeu)).mean() > 0.5
    # small custom buckets: the SDXL set's ~1024² first pass takes minutes a step on a CPU (bucket choice: CI)
    asd = generate("txt2img", {**xl, "alwayson_scripts": {ASD: {"args": [TARGET]}}})
    assert pixels(asd).shape == (173, 301, 3)
    assert "ASD: " in infotext(asd)
    fc = post("/sdapi/v1/txt2img", {**xl, "prompt": "a man img", "alwayson_scripts": {"FastComposer": {"args": [{"enabled": True, "images": [INIT]}]}}})
    refusal(fc, "FastComposer", "model")


def test_sd2_v_freeu_and_asd():
    """An SD2.x 768-v checkpoint (v-prediction, OpenCLIP-H text): FreeU takes SD2.1's values, ASD tiles its pass."""
    models = [m["title"] for m in get("/sdapi/v1/sd-models").json() if any(k in m["title"].lower() for k in ("sd21", "sd2", "v2-"))]
    if not models:
        pytest.skip("no SD2.x checkpoint in this WebUI")
    # no negative prompt: the random-weight SD2.1-v of this rig gives NaN in the U-Net for the uncond of "blurry"
    sd2 = {**BASE, "negative_prompt": "", "width": 256, "height": 256, "steps": 3,
           "override_settings": {"sd_model_checkpoint": models[0]}, "override_settings_restore_afterwards": True}
    plain = generate("txt2img", sd2)
    freeu = generate("txt2img", {**sd2, "alwayson_scripts": {"FreeU": {"args": [{"enabled": True}]}}})
    assert "preset=SD2.1" in infotext(freeu) and np.abs(pixels(plain) - pixels(freeu)).mean() > 0.5
    asd = generate("txt2img", {**sd2, "alwayson_scripts": {ASD: {"args": [TARGET]}}})
    assert pixels(asd).shape == (173, 301, 3) and "ASD: " in infotext(asd)


# -- FastComposer beside ControlNet --------------------------------------------------------------------------------

def test_fastcomposer_subject_in_a_pose(cn_models):
    models = get("/freediff/v1/version").json()
    fc_model = post("/sdapi/v1/txt2img", {**BASE, "steps": 1, "prompt": "a man img",
                                          "alwayson_scripts": {"FastComposer": {"args": [{"enabled": True, "images": [INIT]}]}}})
    if fc_model.status_code == 422 and "no FastComposer model" in fc_model.text:
        pytest.skip("no FastComposer model in this WebUI")
    assert "fastcomposer" in models["features"]
    subject = {"enabled": True, "images": [INIT], "alpha": 0.7}
    pose = unit(cn_models["control"][0], image_size=(256, 256))
    with_both = generate("txt2img", {**BASE, "prompt": "a man img on a beach", "alwayson_scripts": {
        "FastComposer": {"args": [subject]}, "ControlNet": {"args": [pose]}}})
    fc_only = generate("txt2img", {**BASE, "prompt": "a man img on a beach", "alwayson_scripts": {"FastComposer": {"args": [subject]}}})
    assert "FastComposer: " in infotext(with_both)
    assert np.abs(pixels(with_both) - pixels(fc_only)).mean() > 0.5
