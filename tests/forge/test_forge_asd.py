"""Any-Size Diffusion on Forge (its stand-in): exact sizes through the UI and API, the tiler as the U-Net function
wrapper of the tiled pass only, tiled VAE through the VAE patcher's wrappers, Forge's ControlNet per tile, refusals
before any model work, and nothing left behind."""

import numpy as np
import pytest

from forge_sd import ForgeTinySD
from .conftest import pass_objects
from harness import (FORGE_CONTROLNET_LIKE, FORGE_MULTIDIFFUSION_LIKE, WebUI, b64_png, image_from_b64, infotexts_of,
                     make_image, pixels, same_images, unet_fails_at_call, unet_interrupts_at_call)
from lib_freediff.webui import runtime
from lib_freediff.webui.forge import tiling
from lib_freediff.webui.forge.tiling import ForgeTiledUNet
from modules import shared
from tiny_sd import PointwiseUNet

ASD = "Any-Size Diffusion"
CN = "ControlNet"
SMALL_BUCKETS = "64x64, 96x64, 64x96, 128x64"
# first pass 96×64, second pass 200×120 in 2×1 tiles of 104×120 px (13×15 latent)
TARGET = {"enabled": True, "width": 200, "height": 120, "buckets": SMALL_BUCKETS, "tile": 128, "offset_range": 64,
          "overlap": 64, "steps": 3, "denoise": 0.6}
# img2img renders at the target directly: the txt2img-only fields (buckets, upscaler, denoise, steps) are left out
TARGET_I2I = {k: v for k, v in TARGET.items() if k not in ("buckets", "upscaler", "denoise", "steps")}


def wrappers_of(patcher):
    return [w for w in [patcher.model_options.get("model_function_wrapper")] if isinstance(w, ForgeTiledUNet)]


@pytest.fixture(autouse=True)
def model(forge_sd1):
    shared.sd_model = forge_sd1
    yield
    assert not runtime._sessions
    for objects in pass_objects(forge_sd1):
        assert not wrappers_of(objects.unet)
        assert "model_vae_decode_wrapper" not in objects.vae.patcher.model_options


def unet_inputs(sd_model, run):
    """(input shape, our wrappers on the sampling patcher) at each U-Net call."""
    calls = []
    unet = sd_model.forge_objects.unet.model.diffusion_model
    handle = unet.register_forward_pre_hook(lambda m, a: calls.append((tuple(a[0].shape), len(wrappers_of(shared.sd_model.forge_objects.unet)))))
    try:
        result = run()
    finally:
        handle.remove()
    return result, calls


def test_txt2img_exact_size_and_only_the_second_pass_tiled(webui, forge_sd1, tilers):
    res, calls = unet_inputs(forge_sd1, lambda: webui.txt2img({ASD: [TARGET]}, steps=3, enable_hr=False))
    assert res.images[0].size == (200, 120)
    info = res.infotexts[0]
    assert "Size: 96x64" in info and "Hires resize: 200x120" in info and "ASD: width=200 height=120" in info
    assert "tile=128" in info
    assert calls[:3] == [((2, 4, 8, 12), 0)] * 3  # first pass: whole latent, no wrapper
    tiled = calls[3:]
    assert tiled and all(n == 1 for _, n in tiled) and all(s[2] <= 16 and s[3] <= 16 for s, _ in tiled)
    assert len(tilers) == 1 and {h.step for h in tilers[0].history} == {0, 1, 2}


def test_hires_fields_forge_leaves_unset_in_the_api_take_the_first_pass(webui, forge_sd1):
    """Through Forge's API the hires fix has CFG 1.0 and no modules list unless given (a TypeError in Forge's hires
    pass): turned on by Any-Size Diffusion, the pass takes the first pass's CFG and modules."""
    scales = []
    from modules import script_callbacks

    def record(params):
        scales.append((params.denoiser.p.is_hr_pass, params.denoiser.p.hr_cfg if params.denoiser.p.is_hr_pass else params.denoiser.p.cfg_scale))

    client = webui.api_client()  # activates the WebUI's callbacks: ours go on top
    script_callbacks.on_cfg_denoiser(record)
    try:
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "cfg_scale": 5.5,
                                                               "alwayson_scripts": {ASD: {"args": [TARGET]}}})
    finally:
        script_callbacks.remove_callbacks_for_function(record)
    assert r.status_code == 200, r.text
    assert {hr for hr, _ in scales} == {False, True} and {cfg for _, cfg in scales} == {5.5}


def test_odd_target_img2img_and_tiled_vae(webui, forge_sd1, monkeypatch):
    decoded, encoded = [], []
    from lib_freediff.webui import forge as forge_host

    real_decode, real_encode = forge_host.tiled_decode, forge_host.tiled_encode_moments
    monkeypatch.setattr(forge_host, "tiled_decode", lambda m, z: decoded.append(z.shape) or real_decode(m, z))
    monkeypatch.setattr(forge_host, "tiled_encode_moments", lambda m, x: encoded.append(x.shape) or real_encode(m, x))
    res = webui.img2img({ASD: [{**TARGET_I2I, "width": 201, "height": 123, "tiled_vae": "on"}]}, init_images=[make_image(160, 96)],
                        denoising_strength=0.5)
    assert res.images[0].size == (201, 123)
    assert encoded == [(1, 3, 128, 208)] and decoded == [(1, 4, 16, 26)]  # the init image and the result, in tiles
    off = webui.img2img({ASD: [{**TARGET_I2I, "width": 201, "height": 123, "tiled_vae": "off"}]}, init_images=[make_image(160, 96)],
                        denoising_strength=0.5)
    assert len(decoded) == 1 and np.abs(pixels(off.images[0]) - pixels(res.images[0])).mean() < 2.0


def test_tile_auto_by_model_family(forge_sd1):
    for family, tile in (("sd1", 512), ("sd2", 768), ("sdxl", 1024)):
        model = ForgeTinySD(family, context_dim=64)
        shared.sd_model = model
        res = WebUI(sd_model=model).txt2img({ASD: [{"enabled": True, "width": 600, "height": 400, "buckets": "64x64, 96x64",
                                                     "steps": 1, "tile": "auto"}]}, steps=1)
        assert f"tile={tile}" in res.infotexts[0] and res.images[0].size == (600, 400)
    shared.sd_model = forge_sd1


def test_pointwise_unet_tiled_equals_untiled():
    """With a U-Net whose output at a cell depends on that cell only, every tile layout gives the untiled result: the
    per-tile arguments (context rows, timesteps, row chunks) reach apply_model as Forge would pass them untiled."""
    model = ForgeTinySD("sd1", context_dim=64)
    model.forge_objects.unet.model.diffusion_model = PointwiseUNet(64)
    shared.sd_model = model
    ui = WebUI(sd_model=model)
    base = {"enabled": True, "width": 200, "height": 120, "steps": 0}
    whole = ui.img2img({ASD: [{**base, "tile": 256, "mode": "none"}]}, init_images=[make_image(200, 120)], steps=3)
    for mode, batch in (("none", 1), ("none", 3), ("explicit", 2)):
        tiled = ui.img2img({ASD: [{**base, "tile": 128, "overlap": 64, "mode": mode, "tile_batch": batch}]},
                           init_images=[make_image(200, 120)], steps=3)
        assert np.abs(pixels(tiled.images[0]) - pixels(whole.images[0])).max() <= 1, (mode, batch)


def test_one_chunk_per_call_keeps_offsets_per_step(webui, tilers):
    shared.opts.forge_one_chunk_per_call = True  # Forge runs cond and uncond in separate calls when memory is short
    try:
        webui.txt2img({ASD: [TARGET]}, steps=2)
    finally:
        shared.opts.forge_one_chunk_per_call = False
    by_step = {}
    for call in tilers[0].history:
        by_step.setdefault(call.step, set()).add(call.offset)
    assert all(len(offsets) == 1 for offsets in by_step.values()) and {c.call for c in tilers[0].history} == {0, 1}


def test_failures_interrupts_and_next_generation(webui, bare, forge_sd1):
    plain = bare.txt2img()
    unet = forge_sd1.forge_objects.unet.model.diffusion_model
    with unet_fails_at_call(unet, 5), pytest.raises(RuntimeError, match="simulated"):
        webui.txt2img({ASD: [TARGET]}, steps=3)
    with unet_interrupts_at_call(unet, 5):
        webui.txt2img({ASD: [TARGET]}, steps=3)
    assert same_images(plain, bare.txt2img())
    assert same_images(bare.img2img(), webui.img2img({ASD: [{**TARGET_I2I, "enabled": False}]}))


def test_multidiffusion_integrated_at_the_same_time_is_refused(forge_sd1):
    ui = WebUI(script_files=["freediff_asd.py", FORGE_MULTIDIFFUSION_LIKE], sd_model=forge_sd1)
    client = ui.api_client()
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "alwayson_scripts": {
        ASD: {"args": [TARGET]}, "MultiDiffusion Integrated": {"args": [True]}}})
    assert r.status_code == 422 and "'MultiDiffusion Integrated' is enabled too" in r.json()["detail"], r.text


# -- Forge's ControlNet --------------------------------------------------------------------------------------------

def control(model="control", **extra):
    return {"image": make_image(96, 64, seed=3), "model": model, **extra}


@pytest.fixture(scope="module")
def cn_webui(forge_sd1):
    return WebUI(script_files=["freediff_freeu.py", "freediff_asd.py", FORGE_CONTROLNET_LIKE], sd_model=forge_sd1)


def test_controlnet_gets_each_tiles_control(cn_webui, bare, forge_sd1):
    plain = cn_webui.txt2img({ASD: [TARGET]}, steps=3)
    for mode in ("implicit", "explicit", "none"):
        res = cn_webui.txt2img({ASD: [{**TARGET, "mode": mode}], CN: [control()]}, steps=3)
        assert res.images[0].size == (200, 120)
        assert np.abs(pixels(res.images[0]) - pixels(plain.images[0])).mean() > 0.5, mode
    two = cn_webui.img2img({ASD: [TARGET_I2I], CN: [control(), control(weight=0.5, control_mode="ControlNet is more important",
                                                                       mask=make_image(96, 64, seed=9))]},
                           init_images=[make_image(200, 120)], denoising_strength=0.5, batch_size=2)
    assert [im.size for im in two.images] == [(200, 120)] * 2


def half_black_half_white(width=200, height=120):
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, width // 2:] = 255
    from PIL import Image

    return Image.fromarray(arr)


def tile_hint_means(cn_webui, monkeypatch):
    """The mean of the control image each tiled ControlNet call gets (fixed 2×1 grid: left and right halves)."""
    from forge_controlnet_like import TinyControlModel

    means = []
    original = TinyControlModel.forward

    def recording(self, x, hint, timesteps, context, y=None):
        if x.shape[-1] < 25:  # a tile of the 25-latent-px-wide second pass
            means.append(round(float(hint.mean()), 2))
        return original(self, x, hint, timesteps, context, y)

    monkeypatch.setattr(TinyControlModel, "forward", recording)
    cn_webui.img2img({ASD: [{**TARGET_I2I, "mode": "none"}], CN: [{"image": half_black_half_white(), "model": "control"}]},
                     init_images=[make_image(200, 120)], denoising_strength=0.5, steps=2)
    return means


def test_each_tile_gets_its_crop_of_the_control(cn_webui, monkeypatch):
    means = tile_hint_means(cn_webui, monkeypatch)
    assert means and set(means) == {0.04, 0.96}, means  # left tile: 0–104 px (4 white columns), right: 96–200 px
    # what Forge does on its own: the whole control squeezed into each tile
    monkeypatch.setattr(tiling.ControlCrops, "control", lambda self, head, x, t, c, batched, *tiles: head.get_control(x, t, c, batched))
    squeezed = tile_hint_means(cn_webui, monkeypatch)
    assert squeezed and all(abs(m - 0.5) < 0.05 for m in squeezed), squeezed


def test_ip_adapter_rows_and_any_tile_batch(cn_webui, monkeypatch):
    """IP-Adapter builds its tokens per row chunk (cond, uncond) from the transformer options: a call over n tiles
    must say n times the chunks, and then every tile batch gives the same image."""
    import forge_controlnet_like

    layouts = []
    original = forge_controlnet_like.IPAdapterTokens.__call__

    def recording(self, h, hsp, transformer_options):
        layouts.append((h.shape[0], tuple(transformer_options["cond_or_uncond"])))
        return original(self, h, hsp, transformer_options)

    monkeypatch.setattr(forge_controlnet_like.IPAdapterTokens, "__call__", recording)
    images = [cn_webui.txt2img({ASD: [{**TARGET, "tile_batch": batch, "width": 300}], CN: [control("ip-adapter")]}, steps=2)
              for batch in (1, 3)]
    assert np.abs(pixels(images[0].images[0]) - pixels(images[1].images[0])).max() <= 1
    assert (6, (0, 1, 0, 1, 0, 1)) in layouts and all(rows == len(chunks) for rows, chunks in layouts)  # one image: a row a chunk
    with_ip = np.abs(pixels(images[0].images[0]) - pixels(cn_webui.txt2img({ASD: [{**TARGET, "width": 300}]}, steps=2).images[0]))
    assert with_ip.mean() > 5  # the unit acts


@pytest.mark.parametrize("unit,why", [
    (control("reference"), "reference units run the U-Net over the whole reference image"),
    (control("t2i"), "T2I-Adapter"),
    (control("ip-adapter", mask=make_image(96, 64)), "IP-Adapter region mask"),
], ids=["reference", "t2i", "ip-adapter-mask"])
def test_untileable_units_refused_before_any_model_work(cn_webui, forge_sd1, unit, why):
    client = cn_webui.api_client()
    calls = []
    handle = forge_sd1.forge_objects.unet.model.diffusion_model.register_forward_hook(lambda m, a, out: calls.append(1))
    try:
        unit = {k: b64_png(v) if k in ("image", "mask") else v for k, v in unit.items()}
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "alwayson_scripts": {
            ASD: {"args": [TARGET]}, CN: {"args": [unit]}}})
    finally:
        handle.remove()
    assert r.status_code == 422, r.text
    assert "ControlNet unit 0" in r.json()["detail"] and why in r.json()["detail"]
    assert not calls


def test_api_txt2img_and_img2img_with_controlnet(cn_webui):
    client = cn_webui.api_client()
    unit = {**control(), "image": b64_png(make_image(96, 64, seed=3))}
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "seed": 3, "alwayson_scripts": {
        ASD: {"args": [{**TARGET, "width": 201, "height": 123}]}, CN: {"args": [unit]}, "FreeU": {"args": [True]}}})
    assert r.status_code == 200, r.text
    assert image_from_b64(r.json()["images"][0]).size == (201, 123)
    info = infotexts_of(r.json())[0]
    assert "ASD: width=201 height=123" in info and "FreeU: version=2" in info
    r = client.post("/sdapi/v1/img2img", json={"prompt": "x", "steps": 2, "init_images": [b64_png(make_image(96, 64))],
                                                "denoising_strength": 0.5, "alwayson_scripts": {ASD: {"args": [TARGET_I2I]}}})
    assert r.status_code == 200 and image_from_b64(r.json()["images"][0]).size == (200, 120)
    bad = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "alwayson_scripts": {ASD: {"args": [{"enabled": True, "width": -5}]}}})
    assert bad.status_code == 422 and bad.json()["detail"].startswith(f"{ASD}: parameter 'width':")


def test_unet_work_per_step(webui, forge_sd1, tilers):
    """The tiled pass's U-Net input area per step, counted at the U-Net: ≤ 1.3× the latent on the first step (nothing
    to carry yet), ≤ 1.10× on the others."""
    target = {**TARGET, "width": 456, "height": 304, "buckets": "96x64", "tile": 128, "steps": 4}
    _, calls = unet_inputs(forge_sd1, lambda: webui.txt2img({ASD: [target]}, steps=4))
    tiled = iter(shape for shape, wrapped in calls if wrapped)
    per_step = {}
    for call in tilers[0].history:  # the U-Net calls of each tiler call, in order
        for _ in range(call.inner_calls):
            rows, _, h, w = next(tiled)
            per_step[call.step] = per_step.get(call.step, 0) + rows // 2 * h * w  # cond and uncond rows of one image
    assert next(tiled, None) is None
    ratios = [per_step[s] / (57 * 38) for s in sorted(per_step)]
    assert len(ratios) == 4 and ratios[0] <= 1.3 and all(1.0 <= r <= 1.10 for r in ratios[1:]), ratios


def test_freeu_in_the_tiled_pass_shares_whole_latent_statistics(webui, tilers):
    """FreeU's output-block patch and the tiler on Forge: the tiles of each step after the first are scaled by the whole
    latent's statistics of the step before (keyed by Forge's block names); deterministic; not at all without FreeU
    in the hires pass."""
    from lib_freediff.freeu.tiled import TileStats

    both = {ASD: [TARGET], "FreeU": [{"enabled": True}]}
    res = webui.txt2img(both, steps=3)
    assert res.images[0].size == (200, 120) and "FreeU: version=2" in res.infotexts[0]
    (stats,) = tilers[-1].tile_hooks
    assert isinstance(stats, TileStats) and stats.applied > 0
    assert same_images(res, webui.txt2img(both, steps=3))
    webui.txt2img({ASD: [TARGET], "FreeU": [{"enabled": True, "hires": False}]}, steps=3)
    assert tilers[-1].tile_hooks[0].applied == 0
