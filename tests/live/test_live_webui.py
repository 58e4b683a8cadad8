"""Opt-in: drives a running WebUI (with this extension installed) over HTTP.

    FREEDIFF_WEBUI_URL=http://127.0.0.1:7860 bash tests/run_tests.sh tests/live

Checks images and infotext, not only status codes. Skipped unless FREEDIFF_WEBUI_URL is set.
"""

import base64
import io
import json
import os

import numpy as np
import pytest

URL = os.environ.get("FREEDIFF_WEBUI_URL", "").rstrip("/")
pytestmark = pytest.mark.skipif(not URL, reason="set FREEDIFF_WEBUI_URL to a running WebUI to run the live suite")

# small enough for a CPU WebUI with full-size SD1.5 (a few seconds a step); the features act at any size
BASE = {"prompt": "a lighthouse on a cliff, photo", "negative_prompt": "", "steps": 4, "width": 256, "height": 256,
        "seed": 1234, "sampler_name": "Euler", "cfg_scale": 6}


def host_name() -> str:
    """The host the extension says it runs in ("AUTOMATIC1111" or "Forge")."""
    import httpx

    return httpx.get(f"{URL}/freediff/v1/version", timeout=30).json()["host"]


def refusal(response, feature, field=None):
    """A 4xx naming feature (and field): A1111 answers with its middleware's body, Forge (no middleware) with FastAPI's
    own ``{"detail": ...}``."""
    assert response.status_code == 422, response.text[-500:]
    detail = response.json()["detail"]
    assert detail.startswith(feature) and (field is None or f"parameter '{field}'" in detail), detail
    if host_name() != "Forge":
        assert response.json()["body"] == {"feature": feature, **({"param": field} if field else {})}
    assert "/work/" not in response.text and "/home/" not in response.text  # no server paths


def post(path, payload):
    import httpx

    return httpx.post(f"{URL}{path}", json=payload, timeout=1800)  # a loaded CPU WebUI can take minutes


def image(data):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[-1])))


def infotext(response):
    return json.loads(response.json()["info"])["infotexts"][0]


def test_capabilities_route():
    import httpx

    caps = httpx.get(f"{URL}/freediff/v1/version", timeout=30).json()
    assert "freeu" in caps["features"] and caps["host"] in ("AUTOMATIC1111", "Forge")


def test_freeu_txt2img_changes_image_and_writes_infotext():
    plain = post("/sdapi/v1/txt2img", BASE)
    freeu = post("/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"FreeU": {"args": [{"enabled": True}]}}})
    off = post("/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"FreeU": {"args": [{"enabled": False}]}}})
    assert plain.status_code == freeu.status_code == off.status_code == 200
    a, b, c = (np.asarray(image(r.json()["images"][0]).convert("RGB"), dtype=np.int16) for r in (plain, freeu, off))
    assert a.shape == (256, 256, 3)
    assert np.abs(a - b).mean() > 1.0, "FreeU should change the image"
    assert np.array_equal(a, c), "disabled must be identical to a run without FreeU"
    assert "FreeU: version=2" in infotext(freeu) and "FreeU" not in infotext(off)


def test_freeu_bad_value_names_the_field():
    r = post("/sdapi/v1/txt2img", {**BASE, "steps": 2, "alwayson_scripts": {"FreeU": {"args": [{"enabled": True, "b1": "high"}]}}})
    refusal(r, "FreeU", "b1")


def test_freeu_img2img_hires_infotext():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (120, 140, 160)).save(buf, format="PNG")
    r = post("/sdapi/v1/img2img", {**BASE, "init_images": [base64.b64encode(buf.getvalue()).decode()], "denoising_strength": 0.6,
                                    "alwayson_scripts": {"FreeU": {"args": [{"enabled": True, "start": 0.2, "end": 0.8}]}}})
    assert r.status_code == 200
    assert "start=0.2 end=0.8" in infotext(r)
