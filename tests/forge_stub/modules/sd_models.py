"""Forge's sd_models: the A1111 stand-in's checkpoint lists, and ``model_data.forge_loading_parameters`` — the
checkpoint chosen in the UI, which Forge loads at the next generation (after ``before_process``)."""

import os
import types

_A1111 = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "webui_stub", "modules", "sd_models.py"))
with open(_A1111) as f:
    exec(compile(f.read(), _A1111, "exec"))

model_data = types.SimpleNamespace(sd_model=None, forge_loading_parameters={})
