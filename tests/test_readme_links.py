"""The README's relative links and images (the panel screenshots, LICENSE, RESULTS.md) point at files that exist."""

import os
import re

from harness import ROOT


def test_relative_links_and_images_exist():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    targets = re.findall(r'<img src="([^"]+)"', text) + re.findall(r"\]\(([^)#]+)\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert any(t.startswith("tests/browser/screenshots/") for t in local) and "LICENSE" in local
    missing = [t for t in local if not os.path.isfile(os.path.join(ROOT, t))]
    assert not missing, missing
