"""Forge's API: A1111 v1.10.1's endpoints and script-arg mapping (the stand-in beside, run here), without its
middleware and exception handlers — Forge's ``Api.__init__`` has ``api_middleware(self.app)`` commented out, so an
error is answered by FastAPI's own handlers (an ``HTTPException`` as ``{"detail": ...}`` with its status)."""

import os

_A1111 = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "webui_stub", "modules", "api", "api.py"))
with open(_A1111) as f:
    exec(compile(f.read(), _A1111, "exec"))


def _init(self, app, runners: dict, default_args: dict):
    self.app = app
    self.runners = runners
    self.default_args = default_args
    app.add_api_route("/sdapi/v1/txt2img", self.text2imgapi, methods=["POST"])
    app.add_api_route("/sdapi/v1/img2img", self.img2imgapi, methods=["POST"])


Api.__init__ = _init
