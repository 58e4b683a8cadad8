"""Forge's scripts.py: A1111 v1.10.1's (the stand-in beside, run here) with Forge's ``PostprocessImageArgs``, which
carries the image's index."""

import os

_A1111 = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "webui_stub", "modules", "scripts.py"))
with open(_A1111) as f:
    exec(compile(f.read(), _A1111, "exec"))


class PostprocessImageArgs:  # noqa: F811 (Forge's own)
    def __init__(self, image, index):
        self.image = image
        self.index = index
