"""The first pass of Any-Size Diffusion's default buckets, through the API: on SD1.x, SD2.x and SDXL it is at the
model's native area (±10 %) where the target is at least that large, and the second pass never scales it down."""

import math
import re

import pytest

from harness import WebUI, image_from_b64, infotexts_of
from lib_freediff.asd.buckets import FAMILY_NATIVE_AREA
from modules import shared
from tiny_sd import TinySD, tiny_unet

ASD = "Any-Size Diffusion"


@pytest.fixture(scope="module")
def client():
    return WebUI().api_client()


def sizes_of(info: str):
    first = tuple(map(int, re.search(r"Size: (\d+)x(\d+)", info).groups()))
    hires = tuple(map(int, re.search(r"Hires resize: (\d+)x(\d+)", info).groups()))
    return first, hires


@pytest.mark.parametrize("family,target,first", [
    # the cases: the paper's table gave 1024×576 (SD1.5, then downscaled to 768×432) and 2048×1152 (SDXL)
    ("sd1", (768, 432), (672, 384)),
    ("sd2", (1000, 600), (960, 608)),
    ("sdxl", (1408, 792), (1344, 768)),
    # smaller than its bucket: the first pass shrinks to just cover the target, the second pass keeps its size
    # (SDXL's 1280×720 → 1280×736 is checked in tests/asd/test_buckets.py: decoding it costs 20 s here)
    ("sd1", (301, 173), (312, 176)),
])
def test_default_buckets_first_pass_through_the_api(client, family, target, first):
    # the family's topology and context width, attention at the deepest level only (large images, sizes checked)
    shared.sd_model = TinySD(family, unet=tiny_unet(family, attention_resolutions=[4]))
    w, h = target
    r = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a harbour", "steps": 1, "seed": 2, "sampler_name": "Euler",
        "alwayson_scripts": {ASD: {"args": [True, w, h]}}})  # buckets left out: the default
    assert r.status_code == 200, r.text
    assert image_from_b64(r.json()["images"][0]).size == target
    info = infotexts_of(r.json())[0]
    got_first, render = sizes_of(info)
    assert got_first == first
    assert render == (math.ceil(w / 8) * 8, math.ceil(h / 8) * 8)
    # the hires pass covers the render size from the first pass with one factor, never below 1
    assert max(render[0] / first[0], render[1] / first[1]) >= 1
    if got_first[0] >= render[0] and got_first[1] >= render[1]:  # shrunk to the target: scale exactly 1
        assert got_first[0] == render[0] or got_first[1] == render[1]
    else:
        assert abs(first[0] * first[1] / FAMILY_NATIVE_AREA[family] - 1) <= 0.10
    assert "buckets=" not in info  # the default is not written


def test_paper_buckets_stay_a_named_choice():
    """In the panel's live plan (rendering the paper's 1024×576 on the stand-in costs gigabytes of attention)."""
    from harness import load_script_module

    shared.sd_model = TinySD("sd1", context_dim=64)
    panel = load_script_module("freediff_asd.py")
    text = panel._plan_text({"width": 1100, "height": 600, "buckets": "paper"}, False)
    assert "First pass **1024×576**" in text and "Second pass **1104×600**" in text
    text = panel._plan_text({"width": 768, "height": 432, "buckets": "paper"}, False)
    assert "First pass **768×432**" in text and "bucket 1024×576 shrunk to the target" in text
    assert "First pass **672×384**" in panel._plan_text({"width": 768, "height": 432}, False)
