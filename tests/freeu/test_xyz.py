"""XYZ plot axes: registered on the WebUI's xyz_grid module at UI build, applied per cell."""

import types
from contextlib import closing
from copy import copy

import pytest

from harness import WebUI
from modules import processing, scripts, shared
from tiny_sd import TinySD


class AxisOption:
    """xyz_grid.AxisOption's constructor signature (v1.10.1)."""

    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply, self.choices = label, type, apply, choices


@pytest.fixture
def xyz_module(monkeypatch):
    module = types.SimpleNamespace(axis_options=[], AxisOption=AxisOption,
                                   boolean_choice=lambda reverse=False: lambda: ["False", "True"] if reverse else ["True", "False"])
    cls = type("Script", (scripts.Script,), {"__module__": "xyz_grid.py"})
    monkeypatch.setattr(scripts, "scripts_data", [scripts.ScriptClassData(cls, "xyz_grid.py", "", module)])
    return module


def test_axes_registered_and_applied(xyz_module):
    shared.sd_model = TinySD("sd1", context_dim=64)
    webui = WebUI()
    labels = [o.label for o in xyz_module.axis_options]
    for expected in ("[FreeU] Enable FreeU", "[FreeU] Version", "[FreeU] b1 (backbone, stage 1)", "[FreeU] s2 (skip, stage 2)",
                     "[FreeU] Start at step fraction", "[FreeU] End at step fraction", "[FreeU] Values"):
        assert expected in labels
    by_label = {o.label: o for o in xyz_module.axis_options}
    assert by_label["[FreeU] Values"].choices() == ["Auto", "SD1.4", "SD1.5", "SD2.1", "SDXL", "Custom"]

    p = processing.StableDiffusionProcessingTxt2Img(scripts=webui.runners["txt2img"], script_args=webui.script_args("txt2img"), steps=2, width=64, height=64, seed=1)
    cells = []
    for value in ("SDXL", "SD2.1"):
        pc = copy(p)  # what xyz_grid does per cell
        by_label["[FreeU] Enable FreeU"].apply(pc, "True", None)
        by_label["[FreeU] Values"].apply(pc, value, None)
        webui.activate()
        with closing(pc):
            cells.append(processing.process_images(pc).infotexts[0])
    assert "preset=SDXL" in cells[0] and "preset=SD2.1" in cells[1]
    assert "FreeU" not in getattr(p, "freediff_overrides", {})  # the template p is untouched

    bad = copy(p)
    by_label["[FreeU] Enable FreeU"].apply(bad, "True", None)
    by_label["[FreeU] b1 (backbone, stage 1)"].apply(bad, 9.0, None)
    with pytest.raises(Exception, match="parameter 'b1'"), closing(bad):
        processing.process_images(bad)
