"""Opt-in: the panels in the real page of a running WebUI (FREEDIFF_WEBUI_URL; AUTOMATIC1111's gradio 3.41 page or
Forge's gradio 4.40 page), in headless Chromium: open the accordion, change a value, see the plan update, save a preset
and apply it again, the hover help. Screenshots go to tests/artifacts/live_<host>_*.png.

    FREEDIFF_WEBUI_URL=http://127.0.0.1:7860 bash tests/run_tests.sh tests/live/test_live_pages.py
"""

import os
import re
import urllib.parse

import pytest

from .test_live_webui import URL, host_name

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifacts")
PRESET = "live page preset"
pytestmark = [pytest.mark.skipif(not URL, reason="set FREEDIFF_WEBUI_URL to a running WebUI to run the live suite"),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")]


def prefix(title: str, tab: str = "txt2img") -> str:
    """The elem_id prefix the WebUI gives an AlwaysOn script's controls (``Script.elem_id``)."""
    name = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", title.lower()))
    return f"script_{tab}_{name}_"


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(URL, timeout=120000)
        page.wait_for_selector(f"#{prefix('FreeU')}enabled", state="attached", timeout=120000)
        yield page
        browser.close()
    import httpx

    httpx.delete(f"{URL}/freediff/v1/presets/freeu/{urllib.parse.quote(PRESET)}", timeout=30)


def open_panel(page, title):
    from playwright.sync_api import expect

    p = prefix(title)
    accordion = page.locator(f"#{p}enabled").first
    accordion.scroll_into_view_if_needed()
    expect(accordion).to_be_visible(timeout=30000)
    accordion.locator(".label-wrap").first.click()
    return p


def choose(page, selector, option):
    """Picks an option of a gradio dropdown (3.41 and 4.40 both: an input with a ul.options list)."""
    page.locator(f"{selector} input").first.click()
    page.locator(f"{selector} ul.options li", has_text=option).first.click()


def snap(page, p, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.locator(f"#{p}enabled").first.screenshot(path=os.path.join(ARTIFACTS, f"live_{host_name().lower()}_{name}.png"))


def test_freeu_panel_preset_values_save_and_apply(page):
    from playwright.sync_api import expect

    p = open_panel(page, "FreeU")
    b1 = page.locator(f"#{p}b1 input[type=number]")
    expect(b1).to_be_disabled()  # family presets show their values read-only
    choose(page, f"#{p}preset", "SDXL")
    expect(b1).to_have_value("1.3", timeout=15000)
    choose(page, f"#{p}preset", "Custom")
    expect(b1).to_be_enabled(timeout=15000)
    b1.fill("1.25")
    b1.press("Enter")
    page.locator(f"#{p}saved_preset_name textarea, #{p}saved_preset_name input").first.fill(PRESET)
    page.locator(f"#{p}saved_preset_save").click()
    expect(page.locator(f"#{p}saved_preset_status").first).to_contain_text(f"Saved preset {PRESET}", timeout=30000)
    b1.fill("2")
    b1.press("Enter")
    choose(page, f"#{p}saved_preset_select", PRESET)
    page.locator(f"#{p}saved_preset_apply").click()
    expect(b1).to_have_value("1.25", timeout=30000)
    snap(page, p, "freeu")

    import httpx

    saved = httpx.get(f"{URL}/freediff/v1/presets/freeu/{urllib.parse.quote(PRESET)}", timeout=30).json()["values"]
    assert saved["preset"] == "Custom" and saved["b1"] == 1.25


def test_any_size_panel_shows_the_plan_live(page):
    from playwright.sync_api import expect

    p = open_panel(page, "Any-Size Diffusion")
    plan = page.locator(f"#{p}plan").first
    expect(plan).to_contain_text("Second pass", timeout=30000)
    for name, value in (("width", "1001"), ("height", "603")):
        box = page.locator(f"#{p}{name} input[type=number]")
        box.fill(value)
        box.press("Enter")
    expect(plan).to_contain_text("Second pass 1008×608", timeout=30000)
    expect(plan).to_contain_text("Delivered 1001×603")
    snap(page, p, "asd")


def test_hover_help_is_in_the_pages_titles(page):
    titles = page.evaluate("() => typeof titles === 'undefined' ? null : titles")
    assert titles is not None, "the WebUI's hints.js titles table is missing"
    assert "b1 (backbone, stage 1)" in titles and "Alpha (α)" in titles
