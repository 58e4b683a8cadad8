"""FreeU on Forge (its stand-in): UI args / API payload in, image and infotext out; the patch on a per-pass clone of
the U-Net patcher, never on the shared one; the same maths as the hooks used on AUTOMATIC1111."""

import pytest
import torch

from forge_sd import ForgeTinySD, ForgeUNet
from .conftest import pass_objects
from harness import WebUI, infotexts_of, same_images, unet_fails_at_call, unet_interrupts_at_call
from lib_freediff.freeu.unet import FreeUBlockPatch, FreeUFactors, FreeUPatch
from lib_freediff.webui import host, runtime
from modules import shared
from tiny_sd import tiny_unet

FREEU = "FreeU"
# the hires fix as Forge's txt2img tab sends it (its own CFG and modules fields)
HIRES = {"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2, "hr_additional_modules": ["Use same choices"], "hr_cfg": 7.0}


def our_patches(patcher):
    return [p for p in patcher.model_options.get("transformer_options", {}).get("patches", {}).get("output_block_patch", [])
            if isinstance(p, FreeUBlockPatch)]


@pytest.fixture(autouse=True)
def model(forge_sd1):
    shared.sd_model = forge_sd1
    yield
    assert not runtime._sessions
    for objects in pass_objects(forge_sd1):
        assert not our_patches(objects.unet)


def patches_per_call(sd_model, run):
    """FreeU patches (and their on/off state) on the patcher that samples, at each U-Net call."""
    record = []
    unet = sd_model.forge_objects.unet.model.diffusion_model
    handle = unet.register_forward_pre_hook(lambda m, a: record.append([p.active for p in our_patches(shared.sd_model.forge_objects.unet)]))
    try:
        result = run()
    finally:
        handle.remove()
    return result, record


def test_host_is_forge():
    assert host.detect() == host.FORGE and host.current().name == "Forge"


def test_disabled_is_bit_identical_to_no_extension(webui, bare):
    for kwargs in ({}, {"batch_size": 2, "sampler_name": "Heun"}, HIRES):
        assert same_images(bare.txt2img(**kwargs), webui.txt2img({FREEU: [False, 2, 1.5, 1.6, 0.9, 0.2]}, **kwargs))
    assert same_images(bare.img2img(), webui.img2img())


def test_enabled_changes_image_writes_infotext_and_patches_each_pass_once(webui, bare, forge_sd1):
    plain = bare.txt2img(**HIRES)
    res, record = patches_per_call(forge_sd1, lambda: webui.txt2img({FREEU: [True]}, **HIRES))
    assert not same_images(plain, res)
    assert "FreeU: version=2 b1=1.5 b2=1.6 s1=0.9 s2=0.2 preset=SD1.5" in res.infotexts[0]
    # one patch on the sampling clone in both passes, although the hires pass calls process_before_every_sampling twice
    assert record and all(states == [True] for states in record)


def test_schedule_and_hires_switch(webui, forge_sd1):
    _, record = patches_per_call(forge_sd1, lambda: webui.txt2img({FREEU: [{"enabled": True, "start": 0.5}]}, steps=4))
    assert [s[0] for s in record] == [False, False, True, True]
    _, record = patches_per_call(forge_sd1, lambda: webui.txt2img({FREEU: [{"enabled": True, "hires": False}]}, steps=2, **HIRES))
    assert [s[0] for s in record] == [True, True, False, False]


def test_same_maths_as_the_hooks_on_a1111():
    """FreeU's output-block patch on Forge's U-Net forward equals the forward pre-hooks on ldm's UNetModel."""
    factors = FreeUFactors(2, 1.5, 1.6, 0.9, 0.2)
    for family in ("sd1", "sdxl"):
        ldm = tiny_unet(family, context_dim=64)
        forge = ForgeUNet(ldm)
        x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([500.0, 500.0])
        ctx = torch.randn(2, 77, 64)
        y = torch.randn(2, 64) if family == "sdxl" else None
        with torch.no_grad():
            with FreeUPatch(ldm, factors):  # hooks on the blocks both forwards share: off again for Forge's
                hooked = ldm(x, t, context=ctx, y=y)
            patched = forge(x, t, context=ctx, y=y, transformer_options={"patches": {"output_block_patch": [FreeUBlockPatch(factors, 32)]}})
            plain = forge(x, t, context=ctx, y=y, transformer_options={})
        torch.testing.assert_close(patched, hooked, rtol=0, atol=1e-5)
        assert (patched - plain).abs().max() > 1e-3


def test_sdxl_resolves_its_preset_and_gates_stages():
    sdxl = ForgeTinySD("sdxl", context_dim=64)
    shared.sd_model = sdxl
    res = WebUI(sd_model=sdxl).txt2img({FREEU: [True]}, steps=2)
    assert "preset=SDXL" in res.infotexts[0]
    patch = FreeUBlockPatch(FreeUFactors(2, 1.3, 1.4, 0.9, 0.2), 32)
    h, skip = torch.rand(1, 128, 4, 4), torch.rand(1, 128, 4, 4)
    assert not torch.equal(patch(h.clone(), skip, {})[0], h)  # 4×32 backbone channels: stage 1
    h = torch.rand(1, 96, 4, 4)
    assert torch.equal(patch(h.clone(), skip, {})[0], h)  # 3×32: no FreeU stage


def test_failed_and_interrupted_generations_leave_nothing(webui, bare, forge_sd1):
    plain = bare.txt2img()
    unet = forge_sd1.forge_objects.unet.model.diffusion_model
    with unet_fails_at_call(unet, 2), pytest.raises(RuntimeError, match="simulated"):
        webui.txt2img({FREEU: [True]})
    with unet_interrupts_at_call(unet, 2):
        webui.txt2img({FREEU: [True]})
    assert same_images(plain, bare.txt2img())


def test_a_model_without_unet_is_refused_not_run_plain():
    """A Flux/SD3-like checkpoint (no SD1/2/XL flags): a 422 naming FreeU and why, no image made without it."""
    flux = ForgeTinySD("sd1", context_dim=64)
    flux.is_sd1 = False
    shared.sd_model = flux
    client = WebUI(sd_model=flux).api_client()
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
                                               "alwayson_scripts": {"FreeU": {"args": [{"enabled": True}]}}})
    assert r.status_code == 422, r.text
    assert r.json() == {"detail": r.json()["detail"]}  # Forge answers with FastAPI's own handler: the detail alone
    assert "FreeU cannot run on Forge" in r.json()["detail"] and "no U-Net" in r.json()["detail"]


def test_api_dict_list_and_bad_value(webui):
    client = webui.api_client()

    def post(args):
        return client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 5,
                                                      "alwayson_scripts": {"freeu": {"args": args}}})

    named = post([{"enabled": True, "b1": 1.2, "s2": 0.5}])
    assert named.status_code == 200, named.text
    assert "FreeU: version=2 b1=1.2 b2=1.6 s1=0.9 s2=0.5 preset=Custom" in infotexts_of(named.json())[0]
    listed = post([True, 1, 1.3, 1.4, 0.9, 0.2, 0.0, 1.0, True, "SDXL"])
    assert "FreeU: version=1 b1=1.3 b2=1.4 s1=0.9 s2=0.2 preset=SDXL" in infotexts_of(listed.json())[0]
    bad = post([{"enabled": True, "b1": "high"}])
    assert bad.status_code == 422 and bad.json()["detail"].startswith("FreeU: parameter 'b1':")
    assert post([{"enabled": True}]).status_code == 200  # the next generation is unaffected
