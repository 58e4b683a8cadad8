"""FastComposer, FreeU and Any-Size Diffusion in one Forge generation (its stand-in): the subjects in the first pass and
in every tile call of the hires pass (Forge's sampling function hands the tiler the rows of the cond the CFG callback
left), the exact size, the infotext of all three, through the UI and the API, beside Forge's ControlNet, and nothing left
on the model or its patchers after success, failure or interrupt (scenarios in tests/all_three.py)."""

import pytest

import all_three
from all_three import FC
from harness import FORGE_CONTROLNET_LIKE, SCRIPT_FILES, WebUI, make_image
from lib_freediff.freeu.unet import FreeUBlockPatch
from lib_freediff.webui import host, runtime
from lib_freediff.webui.forge.tiling import ForgeTiledUNet
from modules import shared

from .conftest import pass_objects


def ours_on(patcher) -> bool:
    options = patcher.model_options
    patches = options.get("transformer_options", {}).get("patches", {}).get("output_block_patch", [])
    return isinstance(options.get("model_function_wrapper"), ForgeTiledUNet) or any(isinstance(p, FreeUBlockPatch) for p in patches)


@pytest.fixture(autouse=True)
def nothing_left(forge_fc_sd1):
    shared.sd_model = forge_fc_sd1
    yield
    assert not runtime._sessions
    assert "get_learned_conditioning" not in vars(forge_fc_sd1)
    for objects in pass_objects(forge_fc_sd1):
        assert not ours_on(objects.unet)
        assert "model_vae_decode_wrapper" not in objects.vae.patcher.model_options


@pytest.mark.parametrize("width,height,tile", all_three.SIZES)
def test_ui_exact_size_subjects_in_every_tile_and_infotext(fc_webui, width, height, tile):
    all_three.check_ui_generation(fc_webui, width, height, tile)


def test_api_all_three_exact_odd_size(fc_webui):
    wrong = all_three.check_api_generation(fc_webui)
    assert wrong.status_code == 422 and wrong.json()["detail"].startswith(f"{FC}: parameter 'images'")


def test_failure_and_interrupt_in_the_tiled_pass_leave_nothing(fc_webui, fc_bare, forge_fc_sd1):
    all_three.check_failure_and_interrupt(fc_webui, fc_bare, host.current().unet(forge_fc_sd1))


def test_beside_forges_controlnet(forge_fc_sd1):
    """A unit of Forge's ControlNet: every tile call gets its control (computed per tile call) and the subjects."""
    webui = WebUI(script_files=SCRIPT_FILES + [FORGE_CONTROLNET_LIKE], sd_model=forge_fc_sd1)
    all_three.check_beside_controlnet(webui, {"image": make_image(160, 96, seed=21), "model": "control"})
