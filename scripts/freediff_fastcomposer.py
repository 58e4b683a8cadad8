"""FastComposer panel (txt2img and img2img): wires UI arguments to lib_freediff.webui.fastcomposer."""

import os
import sys

import gradio as gr

# the WebUI puts the extension folder on sys.path only while it loads the script files
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from modules import script_callbacks  # noqa: E402
from modules.ui_components import InputAccordion, ToolButton  # noqa: E402

from lib_freediff.webui import app as freediff_app  # noqa: E402
from lib_freediff.webui import fastcomposer as fc  # noqa: E402
from lib_freediff.webui import runtime, script_base, ui, xyz  # noqa: E402

FEATURE = fc.FEATURE
PARAMS = fc.FASTCOMPOSER_PARAMS


class FastComposerScript(script_base.FeatureScript):
    feature = FEATURE
    sorting_priority = 12

    def ui(self, is_img2img):
        p = PARAMS.by_name
        c = {}
        with InputAccordion(False, label="FastComposer", elem_id=self.elem_id("enabled")) as c["enabled"]:
            gr.Markdown("Write `img` after each subject's noun — `a man img and a woman img at the beach` — and give "
                        "one image per marked noun, in order. Needs an SD1.5 model; FastComposer's own U-Net for "
                        "good likeness.", elem_id=self.elem_id("help"))
            with gr.Row():
                c["model"] = gr.Dropdown(label=p["model"].label, choices=fc.list_models(), value=fc.default_model_choice(),
                                         allow_custom_value=True, elem_id=self.elem_id("model"), scale=4)
                refresh = ToolButton("\U0001f504", elem_id=self.elem_id("model_refresh"))
            with gr.Row():
                slots = [gr.Image(label=f"Subject {i + 1}", type="pil", image_mode="RGBA", height=192,
                                  elem_id=self.elem_id(f"image{i + 1}")) for i in range(fc.MAX_IMAGES)]
            # the images argument: the filled slots, in order
            c["images"] = gr.State([])
            with gr.Row():
                c["alpha"] = ui.control(p["alpha"], self.elem_id("alpha"))
                c["hires"] = ui.control(p["hires"], self.elem_id("hires"))
            with gr.Row():
                check = gr.Button("Check loaded model", elem_id=self.elem_id("check"))
                convert = gr.Button("Create WebUI checkpoint", elem_id=self.elem_id("convert"))
                free = gr.Button("Free memory", elem_id=self.elem_id("free"))
            status = gr.Markdown(fc.setup_hint(), elem_id=self.elem_id("status"))
            ui.preset_row(fc.PRESET_FEATURE, [c[name] for name in fc.PRESET_PARAMS.names()], self.elem_id("saved"))

        for slot in slots:
            slot.change(fc.collect_images, inputs=slots, outputs=[c["images"]], show_progress=False)
        refresh.click(lambda: gr.update(choices=fc.list_models()), outputs=[c["model"]], show_progress=False)
        c["model"].change(fc.model_status, inputs=[c["model"]], outputs=[status], show_progress=False)
        c["enabled"].change(lambda on, name: fc.model_status(name) if on else gr.update(), inputs=[c["enabled"], c["model"]],
                            outputs=[status], show_progress=False)
        check.click(fc.model_status, inputs=[c["model"]], outputs=[status])
        convert.click(fc.convert_model, inputs=[c["model"]], outputs=[status])
        free.click(fc.free_memory, outputs=[status])

        pasted = {name: c[name] for name in ("enabled", "model", "alpha", "hires")}
        self.infotext_fields = ui.infotext_fields(PARAMS, pasted)
        self.paste_field_names = [PARAMS.infotext_key]
        return [c[name] for name in PARAMS.names()]

    def process(self, p, *args):
        runtime.guarded(FEATURE, p, lambda: fc.process(p, args))

    def before_hr(self, p, *args):
        fc.before_hr(p)

    def postprocess(self, p, processed, *args):
        fc.postprocess(p)


runtime.register_callbacks()
freediff_app.register_callbacks()
script_callbacks.remove_callbacks_for_function(fc.CACHE.unload)
script_callbacks.on_script_unloaded(fc.CACHE.unload, name="freediff_fastcomposer_free")
script_callbacks.on_before_ui(lambda: xyz.add_axes(FEATURE, PARAMS, ["enabled", "alpha"]), name="freediff_fastcomposer_xyz")
