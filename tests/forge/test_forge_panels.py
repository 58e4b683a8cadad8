"""The panels in gradio 4.40 (Forge's), in headless Chromium: the browser tests of tests/browser/ run again over a page
built by Forge's stand-in (its InputAccordion, a Forge-shaped model)."""

import os

import pytest

from browser.test_panels_in_chromium import (CHROMIUM, test_any_size_panel_shows_the_plan_live,  # noqa: F401
                                             test_fastcomposer_panel_shows_the_set_up_steps,
                                             test_freeu_panel_controls_and_presets)
from harness import WebUI
from modules import paths, shared

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")


@pytest.fixture(scope="module")
def page_url(tmp_path_factory, forge_sd1):
    os.environ["FREEDIFF_PRESETS_DIR"] = str(tmp_path_factory.mktemp("presets"))
    saved = paths.data_path, paths.models_path
    paths.data_path = str(tmp_path_factory.mktemp("webui"))
    paths.models_path = os.path.join(paths.data_path, "models")
    shared.sd_model = forge_sd1
    webui = WebUI(sd_model=forge_sd1)
    webui.demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, show_api=False, quiet=True)
    yield webui, webui.demo.local_url
    webui.demo.close()
    paths.data_path, paths.models_path = saved
    os.environ.pop("FREEDIFF_PRESETS_DIR", None)
