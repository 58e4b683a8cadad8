"""FreeU through the WebUI path: UI args in, image and infotext out; schedule, hires, img2img, cleanup."""

import numpy as np
import pytest

from harness import make_image, pixels, same_images, unet_fails_at_call, unet_interrupts_at_call
from lib_freediff.freeu.unet import attached_hook_count
from lib_freediff.webui import runtime
from modules import infotext_utils, shared
from tiny_sd import TinySD

FREEU = "FreeU"


@pytest.fixture(autouse=True)
def model(sd1):
    shared.sd_model = sd1
    yield
    assert attached_hook_count(sd1.model.diffusion_model) == 0
    assert not runtime._sessions


def unet():
    return shared.sd_model.model.diffusion_model


def active_per_call(webui, run):
    """FreeU's on/off state at each U-Net forward of a generation."""
    record = []
    handle = unet().register_forward_pre_hook(lambda m, a: record.append(runtime.get(FREEU).freeu.active))
    try:
        run()
    finally:
        handle.remove()
    return record


def test_disabled_is_bit_identical_to_no_extension(webui, bare):
    for kwargs in ({}, {"batch_size": 2, "sampler_name": "Heun"}, {"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2}):
        assert same_images(bare.txt2img(**kwargs), webui.txt2img({FREEU: [False, 2, 1.5, 1.6, 0.9, 0.2]}, **kwargs))
    assert same_images(bare.img2img(), webui.img2img())


def test_enabled_changes_image_and_writes_infotext(webui, bare):
    plain = bare.txt2img()
    res = webui.txt2img({FREEU: [True]})
    assert not same_images(plain, res)
    assert "FreeU: version=2 b1=1.5 b2=1.6 s1=0.9 s2=0.2 preset=SD1.5" in res.infotexts[0]
    # same seed, same image
    assert same_images(res, webui.txt2img({FREEU: [True]}))


def test_infotext_round_trip_through_paste_fields(webui):
    args = [True, 1, 1.1, 1.2, 0.7, 0.4, 0.25, 0.75, False, "Custom", 2]
    res = webui.txt2img({FREEU: args})
    params = infotext_utils.parse_generation_parameters(res.infotexts[0])
    script = webui.scripts[("txt2img", FREEU)]
    pasted = {component.elem_id: fn(params) for component, fn in script.infotext_fields}
    values = [pasted[c.elem_id] for c in script.controls]
    assert values == args
    # an infotext without FreeU turns the panel off and leaves the rest
    empty = {component.elem_id: fn({"Steps": "20"}) for component, fn in script.infotext_fields}
    assert empty[script.controls[0].elem_id] is False
    assert all(v is None for k, v in empty.items() if k != script.controls[0].elem_id)
    # pasting it back reproduces the image
    assert same_images(res, webui.txt2img({FREEU: values}))


def test_bad_pasted_infotext_names_the_field(webui, capsys):
    script = webui.scripts[("txt2img", FREEU)]
    got = [fn({"FreeU": "version=2 b1=banana"}) for _, fn in script.infotext_fields]
    assert all(v is None for v in got)  # nothing is changed
    assert "parameter 'b1'" in capsys.readouterr().out


@pytest.mark.parametrize("sampler,calls_per_step", [("Euler", 1), ("Heun", 2)])
def test_schedule_switches_at_the_right_sampler_step(webui, sampler, calls_per_step):
    steps = 10
    record = active_per_call(webui, lambda: webui.txt2img({FREEU: [True, 2, 1.5, 1.6, 0.9, 0.2, 0.3, 0.7]}, steps=steps, sampler_name=sampler))
    # the last step of Heun has one call (it ends at sigma 0)
    step_of_call = [min(i // calls_per_step, steps - 1) for i in range(len(record))]
    assert len(record) == steps * calls_per_step - (calls_per_step - 1)
    assert [s for s, on in zip(step_of_call, record) if on] == [s for s in step_of_call if 3 <= s < 7]


@pytest.mark.parametrize("hires", [True, False])
def test_schedule_in_hires_pass(webui, hires):
    record = active_per_call(webui, lambda: webui.txt2img(
        {FREEU: [True, 2, 1.5, 1.6, 0.9, 0.2, 0.5, 1.0, hires]},
        steps=4, enable_hr=True, hr_scale=2, hr_second_pass_steps=4, denoising_strength=1.0))
    first, second = record[:4], record[4:]
    assert first == [False, False, True, True]
    # hires pass: 4 steps of img2img at strength 1.0, counted on their own
    assert second == ([False, False, True, True] if hires else [False] * 4)


def test_batch_and_count(webui, bare):
    res = webui.txt2img({FREEU: [True]}, batch_size=2, n_iter=2)
    assert len(res.images) == 4 and len(res.infotexts) == 4
    assert all("FreeU: version=2" in t for t in res.infotexts)
    # each image equals its single-image generation (per-image seeds)
    single = webui.txt2img({FREEU: [True]}, seed=3)
    # batched matmuls round differently on CPU: equal up to a grey level
    assert np.abs(pixels(res.images[2]) - pixels(single.images[0])).max() <= 2


def test_img2img_and_inpainting(webui, bare):
    plain = bare.img2img(denoising_strength=0.6)
    res = webui.img2img({FREEU: [True]}, denoising_strength=0.6)
    assert not same_images(plain, res) and "FreeU: " in res.infotexts[0]

    inpaint_model = TinySD("sd1", inpainting=True, context_dim=64)
    shared.sd_model = inpaint_model
    try:
        mask = make_image().convert("L").point(lambda v: 255 if v > 128 else 0)
        plain = bare.img2img(mask=mask)
        res = webui.img2img({FREEU: [True]}, mask=mask)
        assert not same_images(plain, res)
        assert attached_hook_count(inpaint_model.model.diffusion_model) == 0
    finally:
        shared.sd_model = None  # the autouse fixture puts the SD1 model back


def test_no_hook_left_after_a_generation_that_raised(webui, bare, sd1):
    with unet_fails_at_call(sd1.model.diffusion_model, 3), pytest.raises(RuntimeError, match="simulated"):
        webui.txt2img({FREEU: [True]}, steps=6)
    assert attached_hook_count(sd1.model.diffusion_model) == 0
    assert not runtime._sessions
    # and the next generation is unaffected
    assert same_images(bare.txt2img(), webui.txt2img())


def test_interrupt_mid_generation_cleans_up(webui, sd1):
    with unet_interrupts_at_call(sd1.model.diffusion_model, 2):
        res = webui.txt2img({FREEU: [True]}, steps=6)
    assert len(res.images) == 1
    assert attached_hook_count(sd1.model.diffusion_model) == 0


def test_auto_preset_follows_model_family(webui):
    sdxl = TinySD("sdxl", context_dim=None)
    shared.sd_model = sdxl
    res = webui.txt2img({FREEU: [True]}, steps=2)
    assert "b1=1.3 b2=1.4 s1=0.9 s2=0.2 preset=SDXL" in res.infotexts[0]
    assert attached_hook_count(sdxl.model.diffusion_model) == 0


def test_xyz_override_of_b1_uses_custom_values(webui):
    from lib_freediff.webui.overrides import set_override
    from modules import processing
    from contextlib import closing

    p = processing.StableDiffusionProcessingTxt2Img(scripts=webui.runners["txt2img"], script_args=webui.script_args("txt2img", {FREEU: [True]}), steps=2, width=64, height=64, seed=1)
    set_override(p, FREEU, "b1", 1.05)
    with closing(p):
        res = processing.process_images(p)
    assert "b1=1.05" in res.infotexts[0] and "preset=Custom" in res.infotexts[0]


def test_ui_auto_keeps_auto_whatever_family_the_sliders_show(webui):
    """In the panel, b1..s2 are read-only beside Auto and show the family loaded when Values last changed."""
    shown_sdxl = webui.txt2img({FREEU: [True, 2, 1.3, 1.4, 0.9, 0.2, 0.0, 1.0, True, "Auto"]}, steps=2)
    assert "b1=1.5 b2=1.6 s1=0.9 s2=0.2 preset=SD1.5" in shown_sdxl.infotexts[0]
    # values no preset has are the caller's own (a script or extension passing args): Custom
    own = webui.txt2img({FREEU: [True, 2, 1.1, 1.2, 0.5, 0.5, 0.0, 1.0, True, "Auto"]}, steps=2)
    assert "b1=1.1 b2=1.2 s1=0.5 s2=0.5 preset=Custom" in own.infotexts[0]


def test_ui_family_preset_with_other_values_is_refused(webui):
    from lib_freediff.errors import ParamError

    with pytest.raises(ParamError) as e:
        webui.txt2img({FREEU: [True, 2, 1.5, 1.6, 0.9, 0.3, 0.0, 1.0, True, "SD2.1"]}, steps=2)
    assert e.value.param == "b1" and "preset 'SD2.1' sets b1=1.4" in str(e.value)


def test_xyz_axis_over_the_preset_uses_its_values(webui):
    from contextlib import closing

    from lib_freediff.webui.overrides import set_override
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(scripts=webui.runners["txt2img"], script_args=webui.script_args("txt2img", {FREEU: [True]}), steps=2, width=64, height=64, seed=1)
    set_override(p, FREEU, "preset", "SDXL")
    with closing(p):
        res = processing.process_images(p)
    assert "b1=1.3 b2=1.4 s1=0.9 s2=0.2 preset=SDXL" in res.infotexts[0]
