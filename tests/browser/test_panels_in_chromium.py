"""The panels rendered by gradio 3.41.2 in headless Chromium: edit controls, save a preset, the live plan, the
set-up steps. Screenshots of the panels are kept under tests/artifacts/; with FREEDIFF_UPDATE_SCREENSHOTS=1 they
replace the README's, in tests/browser/screenshots/ (reduced to a small palette)."""

import os
import shutil
from contextlib import contextmanager

import pytest

from harness import WebUI
from modules import paths, shared
from tiny_sd import TinySD

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifacts")
README_SHOTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "screenshots")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    os.environ["FREEDIFF_PRESETS_DIR"] = str(tmp_path_factory.mktemp("presets"))
    saved = paths.data_path, paths.models_path
    paths.data_path = str(tmp_path_factory.mktemp("webui"))  # a fresh WebUI: no FastComposer model yet
    paths.models_path = os.path.join(paths.data_path, "models")
    shared.sd_model = TinySD("sd1", context_dim=64)
    webui = WebUI()
    webui.demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, show_api=False, quiet=True)
    yield webui, webui.demo.local_url
    webui.demo.close()
    paths.data_path, paths.models_path = saved
    os.environ.pop("FREEDIFF_PRESETS_DIR", None)


def open_panel(pw, url, prefix, height):
    """A page of the demo with the panel whose elem_id prefix is ``prefix`` opened; returns (browser, page)."""
    from playwright.sync_api import expect

    browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    page = browser.new_page(viewport={"width": 1100, "height": height})
    page.goto(url)
    accordion = page.locator(f"#{prefix}enabled").first
    expect(accordion).to_be_visible(timeout=30000)
    accordion.locator(".label-wrap").first.click()
    return browser, page


@contextmanager
def panel(page_url, title, height):
    """A browser page of the demo with the txt2img panel ``title`` opened: yields (page, its elem_id prefix)."""
    from playwright.sync_api import sync_playwright

    webui, url = page_url
    prefix = webui.scripts[("txt2img", title)].elem_id("")
    with sync_playwright() as pw:
        browser, page = open_panel(pw, url, prefix, height)
        try:
            yield page, prefix
        finally:
            browser.close()


def snap(page, prefix, name):
    """A screenshot of the panel (its accordion) into tests/artifacts/, and into the README's folder on request."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.locator(f"#{prefix}enabled").first.screenshot(path=path)
    if os.environ.get("FREEDIFF_UPDATE_SCREENSHOTS") == "1":
        from PIL import Image

        os.makedirs(README_SHOTS, exist_ok=True)
        Image.open(path).convert("RGB").quantize(colors=64).save(os.path.join(README_SHOTS, name), optimize=True)


def choose(page, selector, option):
    """Picks an option of a gradio 3.41 dropdown (an input with a ul.options list)."""
    page.locator(f"{selector} input").first.click()
    page.locator(f"{selector} ul.options li", has_text=option).first.click()


def test_freeu_panel_controls_and_presets(page_url):
    from playwright.sync_api import expect

    with panel(page_url, "FreeU", 1400) as (page, prefix):
        b1 = page.locator(f"#{prefix}b1 input[type=number]")
        expect(b1).to_be_disabled()  # family presets show their values read-only
        choose(page, f"#{prefix}preset", "SDXL")
        expect(b1).to_have_value("1.3")
        choose(page, f"#{prefix}preset", "Custom")
        expect(b1).to_be_enabled()
        b1.fill("1.25")
        b1.press("Enter")

        page.locator(f"#{prefix}saved_preset_name textarea, #{prefix}saved_preset_name input").first.fill("browser preset")
        page.locator(f"#{prefix}saved_preset_save").click()
        expect(page.locator(f"#{prefix}saved_preset_status").first).to_contain_text("Saved preset browser preset", timeout=15000)
        snap(page, prefix, "freeu_panel.png")

    from lib_freediff.webui import freeu

    saved = freeu.FEATURE_SPEC.store().get("browser preset")
    assert saved["preset"] == "Custom" and saved["b1"] == 1.25


def test_any_size_panel_shows_the_plan_live(page_url):
    from playwright.sync_api import expect

    with panel(page_url, "Any-Size Diffusion", 1600) as (page, prefix):
        plan = page.locator(f"#{prefix}plan").first
        expect(plan).to_contain_text("Second pass 2048×1152")
        for name, value in (("width", "1001"), ("height", "603")):
            box = page.locator(f"#{prefix}{name} input[type=number]")
            box.fill(value)
            box.press("Enter")
        expect(plan).to_contain_text("Second pass 1008×608", timeout=15000)
        expect(plan).to_contain_text("Delivered 1001×603")
        expect(plan).to_contain_text("First pass 672×384")  # the native buckets of the SD1 model loaded
        snap(page, prefix, "asd_panel.png")
        page.locator(f"#{prefix}width input[type=number]").fill("100000")
        page.locator(f"#{prefix}width input[type=number]").press("Enter")
        expect(plan).to_contain_text("parameter 'width'", timeout=15000)


def test_fastcomposer_panel_shows_the_set_up_steps(page_url):
    """The stand-in's models folder has no FastComposer file: the panel opens with the set-up."""
    from playwright.sync_api import expect

    with panel(page_url, "FastComposer", 1500) as (page, prefix):
        status = page.locator(f"#{prefix}status").first
        expect(status).to_contain_text("FastComposer needs its model file, once", timeout=15000)
        expect(status.locator("a[href='https://huggingface.co/mit-han-lab/fastcomposer']")).to_have_count(1)
        expect(status).to_contain_text("Put it into models/fastcomposer/")
        snap(page, prefix, "fastcomposer_panel.png")
