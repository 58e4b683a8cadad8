"""FastComposer, FreeU and Any-Size Diffusion in one AUTOMATIC1111 generation (the stand-in): the subjects in the first
pass and in every tile of the hires pass, the exact size, the infotext of all three, through the UI and the API, beside
ControlNet, and nothing left behind after success, failure or interrupt (scenarios in tests/all_three.py)."""

import pytest

import all_three
from all_three import FC
from harness import CONTROLNET_LIKE, SCRIPT_FILES, WebUI, make_image
from lib_freediff.freeu.unet import attached_hook_count


@pytest.fixture(autouse=True)
def nothing_left(sd1):  # beside conftest's checks of the sessions and the text encoder's hooks
    yield
    assert attached_hook_count(sd1.model.diffusion_model) == 0
    assert "decode" not in vars(sd1.first_stage_model)
    assert not hasattr(sd1.model.diffusion_model, "_original_forward")  # ControlNet's hook


@pytest.mark.parametrize("width,height,tile", all_three.SIZES)
def test_ui_exact_size_subjects_in_every_tile_and_infotext(webui, width, height, tile):
    all_three.check_ui_generation(webui, width, height, tile)


def test_api_all_three_exact_odd_size(webui):
    wrong = all_three.check_api_generation(webui)
    assert wrong.status_code == 422 and wrong.json()["body"] == {"feature": FC, "param": "images"}


def test_failure_and_interrupt_in_the_tiled_pass_leave_nothing(webui, bare, sd1):
    all_three.check_failure_and_interrupt(webui, bare, sd1.model.diffusion_model)


def test_beside_controlnet(sd1):
    """sd-webui-controlnet's stand-in marks every cond with its token: the subjects are found behind it in each tile."""
    webui = WebUI(script_files=SCRIPT_FILES + [CONTROLNET_LIKE], sd_model=sd1)
    unit = {"image": make_image(160, 96, seed=21), "model": "control", "weight": 1.0, "module": "none"}
    calls = all_three.check_beside_controlnet(webui, unit)
    assert all(bool(context[:, 0].abs().eq(1024).all()) for _size, _t, context in calls)
