"""Forge's sd_models: the A1111 stand-in's checkpoint lists, and ``model_data.forge_loading_parameters`` — the
checkpoint chosen in the UI, which Forge loads at the next generation (after ``before_process``)."""

import os
import types

_A1111 = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "webui_stub", "modules", "sd_models.py"))
with open(_A1111) as f:
    exec(compile(f.read(), _A1111, "exec"))

model_data = types.SimpleNamespace(sd_model=None, forge_loading_parameters={})


class FakeInitialModel:
    """What ``shared.sd_model`` is in Forge before its first generation loads a checkpoint."""

    def __init__(self):
        self.cond_stage_model = None
        self.chunk_length = 75


def forge_model_reload():
    """Loads the chosen checkpoint if it is not the loaded one: here ``model_data.sd_model`` when a test set one."""
    from modules import shared

    if model_data.sd_model is not None and shared.sd_model is not model_data.sd_model:
        shared.sd_model = model_data.sd_model
        return shared.sd_model, True
    return shared.sd_model, False
