"""Any-Size Diffusion beside ControlNet (the stand-in in tests/webui_stub/controlnet_like.py, which hooks in as
sd-webui-controlnet does): each tile gets the control of its region, IP-Adapter is independent of the tile
batch, refusals come before any model work, and nothing of ours or ControlNet's stays attached."""

import types

import numpy as np
import pytest
import torch

import controlnet_like as cn
import lib_freediff.webui.asd as asd_glue
from harness import CONTROLNET_LIKE, SCRIPT_FILES, WebUI, b64_png, make_image, pixels, same_images, unet_fails_at_call
from lib_freediff.asd.fstd import MODES, TiledDenoiser
from lib_freediff.webui import runtime
from lib_freediff.webui.a1111.controlnet import ControlNetTiles
from modules import shared
from tiny_sd import PointwiseUNet, TinySD

ASD = "Any-Size Diffusion"
CN = "ControlNet"
TARGET = {"enabled": True, "width": 200, "height": 120, "buckets": "64x64, 96x64, 64x96, 128x64", "tile": 128,
          "offset_range": 64, "overlap": 64, "steps": 2, "denoise": 0.6}
# img2img renders the target directly: the first pass and upscale fields are not given there
TARGET_I2I = {k: v for k, v in TARGET.items() if k not in ("buckets", "upscaler", "denoise", "steps")}
POSE = make_image(160, 96, seed=21)  # a control image of another size than anything generated
DEPTH = make_image(64, 80, seed=22)


def control(image=POSE, **extra):
    return {"image": image, "model": "control", "weight": 1.0, "module": "none", **extra}


@pytest.fixture(scope="module")
def webui(sd1):
    return WebUI(script_files=SCRIPT_FILES + [CONTROLNET_LIKE], sd_model=sd1)


@pytest.fixture(scope="module")
def bare(sd1):
    return WebUI(script_files=[CONTROLNET_LIKE], sd_model=sd1)


def hooked(unet) -> bool:
    """Whether ControlNet's forward (or an IP-Adapter patch) is on the U-Net."""
    forward = vars(unet).get("forward")
    replaced = forward is not None and getattr(forward, "__func__", None) is not type(unet).forward
    return replaced or hasattr(unet, "_original_forward") or any(m._forward_hooks for m in unet.modules())


@pytest.fixture(autouse=True)
def nothing_left_attached(sd1, monkeypatch):
    shared.sd_model = sd1
    original = cn.ControlNetScript.postprocess

    def postprocess(self, p, processed, *units):  # keeps the per-call control sizes after the hook is dropped
        if self.latest_network is not None:
            self.last_hint_shapes = list(self.latest_network.hint_shapes)
        return original(self, p, processed, *units)

    monkeypatch.setattr(cn.ControlNetScript, "postprocess", postprocess)
    yield
    assert not hooked(sd1.model.diffusion_model), "a hook of ControlNet's stayed on the U-Net"
    assert not runtime._sessions


def hint_sizes(script):
    return {s[-2:] for s in script.latest_network.hint_shapes} if script.latest_network else set()


# -- per call: tiled == untiled with a pointwise model ------------------------------------------------------------

def _hooked_pointwise(hires: bool):
    """A pointwise SD with the ControlNet stand-in hooked for a 400×240 image (2 control units, 1 IP-Adapter)."""
    sd = TinySD("sd1", unet=PointwiseUNet(context_dim=64), context_dim=64)
    script = cn.ControlNetScript()
    if hires:  # txt2img: first pass 192×128, hires pass 400×240 (the control has both sizes)
        p = types.SimpleNamespace(sd_model=sd, width=192, height=128, enable_hr=True, hr_resize_x=400, hr_resize_y=240, hr_scale=2)
    else:
        p = types.SimpleNamespace(sd_model=sd, width=400, height=240, enable_hr=False)
    p.setup_conds = lambda: None
    script.process(p, control(), {"image": DEPTH, "model": "ip-adapter"}, control(DEPTH, weight=0.5))
    p.scripts = types.SimpleNamespace(alwayson_scripts=[script])
    return sd, p, script


@pytest.mark.parametrize("hires", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_each_tile_gets_its_control(mode, hires):
    import k_diffusion as K

    sd, p, script = _hooked_pointwise(hires)
    try:
        den = K.external.CompVisDenoiser(sd)
        g = torch.Generator().manual_seed(0)
        H, W = 30, 50
        x = torch.randn(2, 4, H, W, generator=g)
        cond = {"c_crossattn": [cn.mark(torch.randn(2, 77, 64, generator=g), True)]}
        cond["c_crossattn"][0][1, 0] = -cn.MARK  # row 1 is the uncond row
        sigma = torch.tensor([2.0, 2.0])
        ref = den(x, sigma, cond=cond)
        assert hint_sizes(script) == {(240, 400)}
        for tile_batch in (1, 3, 4):
            tiles = ControlNetTiles.of(p, ASD)
            tiles.check()
            d = TiledDenoiser(den, mode=mode, tile=16, overlap=8, offset_range=8, tile_batch=tile_batch, seed=1)
            d.tile_context = tiles
            for step in range(3):
                script.latest_network.hint_shapes.clear()
                d.set_step(step)
                out = d(x, sigma, cond=cond)
                torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
                boxes = d.last_grid()
                assert hint_sizes(script) == {(8 * (b.y1 - b.y0), 8 * (b.x1 - b.x0)) for b in boxes}
            tiles.close()
            assert script.latest_network.control_params[0].hint_cond.shape[-1] in (192, 400)  # originals back
    finally:
        script.postprocess(p, None)


def test_without_per_tile_control_the_stand_in_fails_as_controlnet_does(webui, monkeypatch):
    """The stand-in reproduces what the real ControlNet did in the tiler: a crash on the full-size control, and
    IP-Adapter tokens mixed between samples when the tile batch changes the call's batch."""
    monkeypatch.setattr(ControlNetTiles, "of", classmethod(lambda cls, p, feature: None))
    with pytest.raises(RuntimeError, match="must match the size"):
        webui.img2img({ASD: [TARGET_I2I], CN: [control()]}, init_images=[make_image(200, 120)], denoising_strength=0.5)
    with pytest.raises(RuntimeError, match=r"shape '\[6, -1, \d+\]' is invalid"):  # first pass batch 2, then 3 tiles a call
        webui.txt2img({ASD: [{**TARGET, "width": 300, "tile_batch": 3}], CN: [{"image": DEPTH, "model": "ip-adapter"}]})
    assert webui.scripts[("img2img", CN)].latest_network is None  # taken off after each failure


# -- generations --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_txt2img_and_img2img_with_one_and_two_units(webui, bare, mode):
    before = (bare.txt2img(), bare.img2img())
    for units in ([control()], [control(), control(DEPTH, weight=0.7)]):
        for run, target in ((webui.txt2img, {**TARGET, "mode": mode}),
                            (lambda *a, **k: webui.img2img(*a, init_images=[make_image(160, 96)], denoising_strength=0.5, **k),
                             {**TARGET_I2I, "mode": mode})):
            with_cn = run({ASD: [target], CN: units})
            alone = run({ASD: [target]})
            assert with_cn.images[0].size == (200, 120)
            assert np.abs(pixels(with_cn.images[0]) - pixels(alone.images[0])).mean() > 0.5, "the control must act"
    after = (bare.txt2img(), bare.img2img())
    assert all(same_images(a, b) for a, b in zip(before, after))


def test_hires_pass_tiles_get_crops_of_the_hires_control(webui):
    script = webui.scripts[("txt2img", CN)]
    res = webui.txt2img({ASD: [TARGET], CN: [control()]})
    assert res.images[0].size == (200, 120)
    # first pass untiled at 96×64 with the low-res control; hires pass: 2×1 tiles of 13×15 latent px
    assert {s[-2:] for s in script.last_hint_shapes} == {(64, 96), (120, 104)}


@pytest.mark.parametrize("tile", [512, 128])
def test_first_pass_of_the_hires_height_keeps_its_own_control(webui, tile):
    """301×173: the never-downscale plan's first pass is 312×176 and its hires pass 304×176, the same height, which
    ControlNet alone takes for the hires pass (its 304-px control then fails in the 312-px first pass). Untiled (one
    tile) and tiled (3×2 tiles) alike."""
    script = webui.scripts[("txt2img", CN)]
    target = {"enabled": True, "width": 301, "height": 173, "tile": tile, "offset_range": min(256, tile), "steps": 1}
    res = webui.txt2img({ASD: [target], CN: [control()]}, steps=1)
    assert res.images[0].size == (301, 173)
    shapes = {s[-2:] for s in script.last_hint_shapes}
    assert (176, 312) in shapes and ((176, 304) in shapes if tile == 512 else all(w < 304 for h, w in shapes - {(176, 312)}))


def test_ip_adapter_same_image_for_every_tile_batch(webui):
    from modules import shared

    images, batches = [], []
    unet = shared.sd_model.model.diffusion_model
    handle = unet.register_forward_pre_hook(lambda m, a: batches.append(a[0].shape[0]))
    try:
        for tile_batch in (1, 3, 4):
            res = webui.img2img({ASD: [{**TARGET_I2I, "tile_batch": tile_batch}], CN: [{"image": DEPTH, "model": "ip-adapter"}, control()]},
                                init_images=[make_image(160, 96)], denoising_strength=0.5)
            images.append(pixels(res.images[0]))
    finally:
        handle.remove()
    for other in images[1:]:
        diff = np.abs(images[0] - other)
        assert diff.max() <= 1 and diff.mean() < 0.01
    # while an IP-Adapter unit is on, every call holds one tile (cond + uncond), whatever tile_batch says
    assert batches and set(batches) == {2}, batches


def test_effective_region_mask_is_cut_per_tile(webui):
    left = make_image(200, 120, seed=0).point(lambda v: 0)
    left.paste((255, 255, 255), (0, 0, 100, 120))  # the control acts on the left half only
    masked = webui.img2img({ASD: [TARGET_I2I], CN: [control(mask=left)]}, init_images=[make_image(200, 120)], denoising_strength=0.5)
    alone = webui.img2img({ASD: [TARGET_I2I]}, init_images=[make_image(200, 120)], denoising_strength=0.5)
    diff = np.abs(pixels(masked.images[0]) - pixels(alone.images[0])).mean(axis=(0, 2))
    assert diff[:90].mean() > 4 * diff[110:].mean()


# -- failures -----------------------------------------------------------------------------------------------------

def test_exception_in_tiled_pass_leaves_no_hook_for_the_other_tab(webui, bare, sd1):
    before = bare.img2img()
    with unet_fails_at_call(sd1.model.diffusion_model, 5), pytest.raises(RuntimeError, match="simulated"):
        webui.txt2img({ASD: [TARGET], CN: [control(), {"image": DEPTH, "model": "ip-adapter"}]})
    assert webui.scripts[("txt2img", CN)].latest_network is None
    assert same_images(before, webui.img2img())  # the other tab, with no unit: as before


def test_unit_that_cannot_be_tiled_is_refused_before_any_model_work(webui, sd1):
    client = webui.api_client()
    calls = []
    handle = sd1.model.diffusion_model.register_forward_hook(lambda m, a, out: calls.append(1))  # completed calls
    try:
        r = client.post("/sdapi/v1/txt2img", json={
            "prompt": "a hall", "steps": 2, "seed": 1, "width": 64, "height": 64,
            "alwayson_scripts": {ASD: {"args": [TARGET]}, CN: {"args": [{"image": b64_png(POSE), "model": "reference"}]}}})
    finally:
        handle.remove()
    assert r.status_code == 422, r.text
    assert "ControlNet unit 1 (module none, model reference) cannot be used with tiling" in r.json()["detail"]
    assert r.json()["body"] == {"feature": ASD}
    assert not calls, "the U-Net ran before the refusal"
    assert webui.scripts[("txt2img", CN)].latest_network is None


def test_small_target_is_not_tiled_and_any_unit_works(webui):
    res = webui.txt2img({ASD: [{**TARGET, "width": 128, "height": 80}], CN: [control(model="reference")]})
    assert res.images[0].size == (128, 80)
