"""Hover help (javascript/freediff.js, read by the WebUI's hints.js, which matches an element's text to a key): every
control of the three panels as built has an entry, and no key is a label the WebUI itself or another panel uses."""

import json
import os
import re

import gradio as gr
import pytest

from harness import ROOT, WebUI

# generic labels that carry their help as a line under the control (gradio's info) instead
NO_HOVER = {("FreeU", "Version"), ("FreeU", "Values")}


def titles() -> dict:
    with open(os.path.join(ROOT, "javascript", "freediff.js"), encoding="utf-8") as f:
        text = f.read()
    body = re.search(r"Object\.assign\(titles, (\{.*?\})\);", text, re.S).group(1)
    return json.loads(body)


@pytest.fixture(scope="module")
def panels(sd1):
    return WebUI(sd_model=sd1)


def labels_of(webui, tab, title):
    script = webui.scripts[(tab, title)]
    out = [title]  # the accordion
    for control in script.controls[1:]:
        if not isinstance(control, gr.State):
            out.append(control.label)
    return out


@pytest.mark.parametrize("title", ["FreeU", "Any-Size Diffusion", "FastComposer"])
def test_every_panel_control_has_hover_help(panels, title):
    table = titles()
    missing = [label for label in labels_of(panels, "txt2img", title) if label not in table and (title, label) not in NO_HOVER]
    assert not missing, f"{title}: no hover help for {missing}"
    assert all(len(table[label]) > 30 for label in labels_of(panels, "txt2img", title) if label in table)


def test_hover_keys_are_not_the_webuis_own_labels():
    """With a WebUI checkout (FREEDIFF_WEBUI_SRC), none of our keys re-titles one of its controls."""
    src = os.environ.get("FREEDIFF_WEBUI_SRC")
    if not src:
        pytest.skip("FREEDIFF_WEBUI_SRC is not set")
    with open(os.path.join(src, "javascript", "hints.js"), encoding="utf-8") as f:
        theirs = set(re.findall(r'^\s*"([^"]+)":', f.read(), re.M))
    assert not set(titles()) & theirs
