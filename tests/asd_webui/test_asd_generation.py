"""Any-Size Diffusion through the WebUI path: panel args / API payload in, exact-size image and infotext out."""

import numpy as np
import pytest

import lib_freediff.webui.asd as asd_glue
from harness import TILED_DIFFUSION_LIKE, WebUI, b64_png, image_from_b64, infotexts_of, make_image, pixels, same_images, unet_fails_at_call, unet_interrupts_at_call
from lib_freediff.freeu.tiled import TileStats
from lib_freediff.freeu.unet import attached_hook_count
from lib_freediff.webui import runtime
from modules import shared

ASD = "Any-Size Diffusion"
SMALL_BUCKETS = "64x64, 96x64, 64x96, 128x64"
# a target the tiny model renders quickly: first pass 96×64 (ratio 0.667), second pass 200×120, 2×1 tiles
TARGET = {"enabled": True, "width": 200, "height": 120, "buckets": SMALL_BUCKETS, "tile": 128, "offset_range": 64,
          "overlap": 64, "steps": 3, "denoise": 0.6}
# img2img renders the target directly: the first pass and upscale fields are not given there
TARGET_I2I = {k: v for k, v in TARGET.items() if k not in ("buckets", "upscaler", "denoise", "steps")}


@pytest.fixture(autouse=True)
def model(sd1):
    shared.sd_model = sd1
    yield
    vae = sd1.first_stage_model
    assert "decode" not in vae.__dict__ and "encode" not in vae.__dict__
    assert not runtime._sessions


def unet_input_sizes(sd1, run):
    sizes = []
    handle = sd1.model.diffusion_model.register_forward_pre_hook(lambda m, a: sizes.append(tuple(a[0].shape[-2:])))
    try:
        result = run()
    finally:
        handle.remove()
    return result, sizes


def test_txt2img_exact_size_bucket_and_tiled_second_pass(webui, sd1, tilers):
    res, sizes = unet_input_sizes(sd1, lambda: webui.txt2img({ASD: [TARGET]}, steps=3))
    assert res.images[0].size == (200, 120)
    info = res.infotexts[0]
    assert "Size: 96x64" in info and "Hires resize: 200x120" in info
    assert "ASD: width=200 height=120" in info and "mode=implicit" in info
    # first pass untouched at the bucket's latent (8×12); the second pass runs on tiles of at most 16
    assert sizes[:3] == [(8, 12)] * 3
    assert all(h <= 16 and w <= 16 for h, w in sizes[3:]) and len(sizes) > 3
    assert len(tilers) == 1 and tilers[0].history


def test_odd_target_is_delivered_exactly(webui):
    res = webui.txt2img({ASD: [{**TARGET, "width": 201, "height": 123}]}, steps=2)
    assert res.images[0].size == (201, 123)


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM++ 2M"])
def test_offsets_identical_within_a_step_and_deterministic(webui, tilers, sampler):
    shared.opts.batch_cond_uncond = False  # cond and uncond in separate model calls
    try:
        webui.txt2img({ASD: [TARGET]}, steps=2, sampler_name=sampler)
        webui.txt2img({ASD: [TARGET]}, steps=2, sampler_name=sampler)
    finally:
        shared.opts.batch_cond_uncond = True
    first, second = tilers
    by_step = {}
    for call in first.history:
        by_step.setdefault(call.step, set()).add(call.offset)
    assert all(len(offsets) == 1 for offsets in by_step.values())
    assert len(by_step) == 3  # hires pass: 3 steps
    assert [c.offset for c in first.history] == [c.offset for c in second.history]


def test_disabled_is_bit_identical(webui, bare):
    assert same_images(bare.txt2img(), webui.txt2img({ASD: [{**TARGET, "enabled": False}]}))


def test_together_with_freeu(webui):
    res = webui.txt2img({ASD: [TARGET], "FreeU": [True]}, steps=2)
    assert res.images[0].size == (200, 120)
    assert "FreeU: version=2" in res.infotexts[0] and "ASD: " in res.infotexts[0]
    assert attached_hook_count(shared.sd_model.model.diffusion_model) == 0


def test_freeu_in_the_tiled_pass_shares_whole_latent_statistics(webui, tilers):
    """Both panels on: the tiler tells FreeU's session of its tiled calls, so the tiles of each step after the first
    are scaled by the whole latent's statistics of the step before (lib_freediff.freeu.tiled); deterministic."""
    both = {ASD: [TARGET], "FreeU": [{"enabled": True}]}
    res = webui.txt2img(both, steps=3)
    assert res.images[0].size == (200, 120)
    assert "FreeU: version=2" in res.infotexts[0] and "ASD: width=200 height=120" in res.infotexts[0]
    (stats,) = tilers[0].tile_hooks
    assert isinstance(stats, TileStats) and stats.applied > 0
    assert same_images(res, webui.txt2img(both, steps=3))
    webui.txt2img({ASD: [TARGET], "FreeU": [{"enabled": True, "hires": False}]}, steps=3)  # no FreeU in the tiled pass
    assert tilers[-1].tile_hooks[0].applied == 0
    assert attached_hook_count(shared.sd_model.model.diffusion_model) == 0


def test_img2img_renders_the_target_with_tiles(webui, sd1, tilers):
    res, sizes = unet_input_sizes(sd1, lambda: webui.img2img({ASD: [TARGET_I2I]}, init_images=[make_image(160, 96)], denoising_strength=0.5))
    assert res.images[0].size == (200, 120)
    assert all(h <= 16 and w <= 16 for h, w in sizes)
    assert "ASD: width=200 height=120" in res.infotexts[0]


def test_image_upscaler_to_a_size_off_the_latent_grid_with_tiled_vae(webui):
    """An image upscaler scales the first pass (96×64) by one factor to cover 200×120: 200×134, not a multiple of 8
    until the hires crop. The tiled VAE leaves such an encode to the host's VAE instead of failing on it."""
    res = webui.txt2img({ASD: [{**TARGET, "upscaler": "Lanczos", "tiled_vae": "on"}]}, steps=2)
    assert res.images[0].size == (200, 120) and "upscaler=Lanczos" in res.infotexts[0]


def test_tiled_diffusion_at_the_same_time_is_refused(sd1):
    """Two tilers cannot share a pass: with Tiled Diffusion on (API list or dict form), a 422 naming it; off, it runs."""
    ui = WebUI(script_files=["freediff_asd.py", TILED_DIFFUSION_LIKE], sd_model=sd1)
    client = ui.api_client()
    for enabled in ([True, "MultiDiffusion"], [{"enabled": True}]):
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "alwayson_scripts": {
            ASD: {"args": [TARGET]}, "Tiled Diffusion": {"args": enabled}}})
        assert r.status_code == 422 and "'Tiled Diffusion' is enabled too" in r.json()["detail"], r.text
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "alwayson_scripts": {
        ASD: {"args": [TARGET]}, "Tiled Diffusion": {"args": [False]}}})
    assert r.status_code == 200, r.text


def test_tiled_vae_matches_untiled_closely(webui):
    off = webui.txt2img({ASD: [{**TARGET, "tiled_vae": "off"}]}, steps=2)
    on = webui.txt2img({ASD: [{**TARGET, "tiled_vae": "on"}]}, steps=2)
    assert on.images[0].size == off.images[0].size == (200, 120)
    diff = np.abs(pixels(on.images[0]) - pixels(off.images[0]))
    assert diff.mean() < 1.0 and diff.max() <= 8


def test_exception_mid_generation_leaves_nothing(webui, bare, sd1):
    # the 5th call is inside the tiled second pass
    with unet_fails_at_call(sd1.model.diffusion_model, 5), pytest.raises(RuntimeError, match="simulated"):
        webui.txt2img({ASD: [TARGET]}, steps=2)
    assert same_images(bare.txt2img(), webui.txt2img())


def test_live_plan_text():

    text = asd_glue.describe_plan({**asd_glue.ASD_PARAMS.defaults(), **TARGET}, is_img2img=False)
    # 25×15 latent, tiles of at most 16: 2 columns of 13, one row of 15
    assert "First pass **96×64**" in text
    assert "Second pass **200×120**: 2×1 tiles of 104×120 px (implicit), U-Net work 1.04× the image per step" in text
    explicit = asd_glue.describe_plan({**asd_glue.ASD_PARAMS.defaults(), **TARGET, "mode": "explicit", "overlap": 64}, True)
    assert "First pass" not in explicit and "3×1 tiles of 112×120 px (explicit), U-Net work 1.68×" in explicit
    small = asd_glue.describe_plan({**asd_glue.ASD_PARAMS.defaults(), **TARGET, "tile": 256}, True)
    assert "Second pass **200×120**: one tile (not tiled)" in small


@pytest.fixture(scope="module")
def client(sd1):
    shared.sd_model = sd1
    return WebUI().api_client()


def test_api_dict_and_list(client):
    payload = {"prompt": "a valley", "steps": 2, "seed": 3, "width": 512, "height": 512,
               "alwayson_scripts": {"any-size diffusion": {"args": [TARGET]}}}
    r = client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    assert image_from_b64(r.json()["images"][0]).size == (200, 120)
    positional = [True, 200, 120, SMALL_BUCKETS, "implicit", 128, 64, 0, 64, 0, "Latent", 0.6, 3, "auto"]
    r2 = client.post("/sdapi/v1/txt2img", json={**payload, "alwayson_scripts": {"Any-Size Diffusion": {"args": positional}}})
    assert r2.json()["images"] == r.json()["images"]
    assert infotexts_of(r2.json()) == infotexts_of(r.json())


@pytest.mark.parametrize("change,field", [
    ({"width": 70000}, "width"),
    ({"width": 5000, "height": 5000}, "width"),  # over the 16.8 MP budget: refused before any work
    ({"buckets": "12 by 7"}, "buckets"),
    ({"mode": "spiral"}, "mode"),
    ({"tile": 100}, "tile"),
    ({"mode": "explicit", "overlap": 128}, "overlap"),
    ({"denoise": 2}, "denoise"),
    ({"colour": "red"}, "colour"),
])
def test_api_bad_values_name_the_field(client, sd1, change, field):
    calls = []
    handle = sd1.model.diffusion_model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                   "alwayson_scripts": {ASD: {"args": [{**TARGET, **change}]}}})
    finally:
        handle.remove()
    assert r.status_code == 422, r.text
    assert f"parameter '{field}'" in r.json()["errors"]
    assert not calls  # no U-Net work was done
    assert not runtime._sessions


def test_api_img2img(client):
    r = client.post("/sdapi/v1/img2img", json={
        "prompt": "x", "steps": 2, "denoising_strength": 0.5, "init_images": [b64_png(make_image(96, 64))],
        "alwayson_scripts": {ASD: {"args": [{**TARGET_I2I, "width": 150, "height": 100}]}}})
    assert r.status_code == 200, r.text
    assert image_from_b64(r.json()["images"][0]).size == (150, 100)


def test_api_img2img_refuses_txt2img_fields_it_would_not_use(client):
    """img2img renders the target directly with the request's own denoising strength and steps: ASD's first-pass
    and upscale fields would be silently unused there, so giving one is refused, named or positional."""
    payload = {"prompt": "x", "steps": 2, "denoising_strength": 0.5, "init_images": [b64_png(make_image(96, 64))]}
    positional = [True, 150, 100, "native", "implicit", 128, 64, 0, 64, 0, "Latent", 0.3]  # denoise 0.3
    for args, field in (([{**TARGET_I2I, "denoise": 0.3}], "denoise"), ([{**TARGET_I2I, "buckets": "paper"}], "buckets"),
                        (positional, "denoise")):
        r = client.post("/sdapi/v1/img2img", json={**payload, "alwayson_scripts": {ASD: {"args": args}}})
        assert r.status_code == 422, r.text
        assert f"parameter '{field}': is not used in img2img" in r.json()["errors"]
    # the positional padding (the defaults) is not a value given
    r = client.post("/sdapi/v1/img2img", json={**payload, "alwayson_scripts": {ASD: {"args": [True, 150, 100]}}})
    assert r.status_code == 200, r.text


def test_panel_img2img_ignores_its_hidden_txt2img_fields(webui):
    """The panel hides them in img2img; a pasted txt2img infotext may have set them: not refused there."""
    res = webui.img2img({ASD: [True, 200, 120, SMALL_BUCKETS, "implicit", 128, 64, 0, 64, 0, "Latent", 0.45, 3, "auto"]},
                        init_images=[make_image(160, 96)], denoising_strength=0.5, steps=2)
    assert res.images[0].size == (200, 120)


def test_api_positional_offset_range_default_against_a_small_tile_is_named(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "alwayson_scripts": {
        ASD: {"args": [True, 200, 120, SMALL_BUCKETS, "implicit", 128]}}})  # offset_range left out: 256
    assert r.status_code == 422, r.text
    assert ("parameter 'offset_range': is 256 px (its default, taken when it is not given) but must be at most the tile "
            "size (128 px)") in r.json()["errors"]


def test_interrupt_in_second_pass_cleans_up(webui, sd1):
    # the 5th call is inside the tiled second pass
    with unet_interrupts_at_call(sd1.model.diffusion_model, 5):
        res = webui.txt2img({ASD: [TARGET]}, steps=3)
    assert len(res.images) == 1
    # the autouse fixture checks that the VAE and the sessions are clean


def test_infotext_round_trip_through_paste_fields(webui):
    from modules import infotext_utils

    args = [True, 201, 123, SMALL_BUCKETS, "explicit", 128, 64, 2, 64, 3, "Latent (bicubic)", 0.55, 2, "off"]
    res = webui.txt2img({ASD: args}, steps=2)
    assert "buckets=64x64+96x64+64x96+128x64 " in res.infotexts[0]  # readable, nothing escaped
    params = infotext_utils.parse_generation_parameters(res.infotexts[0])
    script = webui.scripts[("txt2img", ASD)]
    pasted = {component.elem_id: fn(params) for component, fn in script.infotext_fields}
    values = [pasted[c.elem_id] for c in script.controls]
    assert values == args
    assert same_images(res, webui.txt2img({ASD: values}, steps=2))
