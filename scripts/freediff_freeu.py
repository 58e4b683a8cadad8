"""FreeU panel (txt2img and img2img): wires UI arguments to lib_freediff.webui.freeu."""

import os
import sys

import gradio as gr

# the WebUI puts the extension folder on sys.path only while it loads the script files
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from modules import script_callbacks  # noqa: E402
from modules.ui_components import InputAccordion  # noqa: E402

from lib_freediff.freeu.params import CUSTOM, FAMILY_VALUES, FACTOR_NAMES, FEATURE, FREEU_PARAMS  # noqa: E402
from lib_freediff.webui import app as freediff_app  # noqa: E402
from lib_freediff.webui import freeu, runtime, script_base, ui, xyz  # noqa: E402


class FreeUScript(script_base.FeatureScript):
    feature = FEATURE
    sorting_priority = 10

    def ui(self, is_img2img):
        p = FREEU_PARAMS.by_name
        c = {}
        with InputAccordion(False, label="FreeU", elem_id=self.elem_id("enabled")) as c["enabled"]:
            with gr.Row():
                c["preset"] = ui.control(p["preset"], self.elem_id("preset"))
                c["version"] = ui.control(p["version"], self.elem_id("version"))
            with gr.Row():
                for name in ("b1", "b2"):
                    c[name] = ui.control(p[name], self.elem_id(name), interactive=False)
            with gr.Row():
                for name in ("s1", "s2"):
                    c[name] = ui.control(p[name], self.elem_id(name), interactive=False)
            with gr.Row():
                c["start"] = ui.control(p["start"], self.elem_id("start"))
                c["end"] = ui.control(p["end"], self.elem_id("end"))
            with gr.Row():
                c["hires"] = ui.control(p["hires"], self.elem_id("hires"))
                c["threshold"] = ui.control(p["threshold"], self.elem_id("threshold"))
            ordered = [c[name] for name in FREEU_PARAMS.names()]
            ui.preset_row(freeu.FEATURE_SPEC, ordered, self.elem_id("saved"))

        factor_controls = [c[name] for name in FACTOR_NAMES]
        c["preset"].change(_show_preset_values, inputs=[c["preset"], *factor_controls], outputs=factor_controls, show_progress=False)
        self.infotext_fields = ui.infotext_fields(FREEU_PARAMS, c)
        self.paste_field_names = [FREEU_PARAMS.infotext_key]
        return ordered

    def process(self, p, *args):
        runtime.guarded(FEATURE, p, lambda: freeu.process(p, args))

    def process_before_every_sampling(self, p, *args, **kwargs):
        freeu.process_before_every_sampling(p)

    def before_hr(self, p, *args):
        freeu.before_hr(p)

    def postprocess(self, p, processed, *args):
        freeu.postprocess(p)


def _show_preset_values(preset, *current):
    """Family presets show their values read-only; Custom unlocks the sliders."""
    if preset == CUSTOM:
        return [gr.update(interactive=True) for _ in current]
    family = freeu.auto_family_preset() if preset not in FAMILY_VALUES else preset
    return [gr.update(value=FAMILY_VALUES[family][name], interactive=False) for name in FACTOR_NAMES]


runtime.register_callbacks()
freediff_app.register_callbacks()
script_callbacks.on_before_ui(lambda: xyz.add_axes(FEATURE, FREEU_PARAMS, ["enabled", "version", "b1", "b2", "s1", "s2", "start", "end", "preset"]), name="freediff_freeu_xyz")
