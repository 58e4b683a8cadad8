"""The Forge leg: these tests run with ``FREEDIFF_HOST=forge`` (Forge's stand-in on the path, gradio 4 and Forge's
API stack from the overlay that ``tests/run_tests.sh`` builds); the A1111 leg skips them."""

import os

import pytest

if os.environ.get("FREEDIFF_HOST") != "forge":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="module")
def forge_sd1():
    from forge_sd import ForgeTinySD

    return ForgeTinySD("sd1", context_dim=64)


@pytest.fixture(scope="module")
def webui(forge_sd1):
    from harness import WebUI

    return WebUI(sd_model=forge_sd1)


@pytest.fixture(scope="module")
def bare(forge_sd1):
    from harness import WebUI

    return WebUI(script_files=[], sd_model=forge_sd1)


@pytest.fixture(scope="module")
def forge_fc_sd1(tokenizer, model_files):
    """An SD1 model as Forge has one, its prompts encoded by Forge's text processing engine over a tiny CLIP text model
    of the post-fuse width; the FastComposer release in models/fastcomposer."""
    from forge_sd import ForgeTinySD
    from tests.fastcomposer import fixtures

    return ForgeTinySD("sd1", context_dim=fixtures.EMBED_DIM, clip=(tokenizer, fixtures.trained_looking_text_model()))


@pytest.fixture(scope="module")
def fc_webui(forge_fc_sd1):
    from harness import WebUI

    return WebUI(sd_model=forge_fc_sd1)


@pytest.fixture(scope="module")
def fc_bare(forge_fc_sd1):
    from harness import WebUI

    return WebUI(script_files=[], sd_model=forge_fc_sd1)


def pass_objects(model) -> tuple:
    """The model's ``forge_objects`` now, the original ones and the ones after LoRAs (each pass starts from these)."""
    return model.forge_objects, model.forge_objects_original, model.forge_objects_after_applying_lora
