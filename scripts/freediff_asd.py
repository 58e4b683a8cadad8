"""Any-Size Diffusion panel (txt2img and img2img): wires UI arguments to lib_freediff.webui.asd."""

import os
import sys

import gradio as gr

# the WebUI puts the extension folder on sys.path only while it loads the script files
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from modules import script_callbacks, shared  # noqa: E402
from modules.ui_components import InputAccordion  # noqa: E402

from lib_freediff.asd.params import ASD_PARAMS, FEATURE  # noqa: E402
from lib_freediff.errors import FreeDiffError  # noqa: E402
from lib_freediff.webui import app as freediff_app  # noqa: E402
from lib_freediff.webui import asd, overrides, runtime, script_base, ui, xyz  # noqa: E402

PLAN_INPUTS = ("width", "height", "buckets", "mode", "tile")


class AnySizeDiffusionScript(script_base.FeatureScript):
    feature = FEATURE
    sorting_priority = 11

    def ui(self, is_img2img):
        p = ASD_PARAMS.by_name
        c = {}
        with InputAccordion(False, label=FEATURE, elem_id=self.elem_id("enabled")) as c["enabled"]:
            with gr.Row():
                c["width"] = ui.control(p["width"], self.elem_id("width"))
                c["height"] = ui.control(p["height"], self.elem_id("height"))
            plan = gr.Markdown(_plan_text(ASD_PARAMS.defaults(), is_img2img), elem_id=self.elem_id("plan"))
            with gr.Row():
                c["buckets"] = ui.control(p["buckets"], self.elem_id("buckets"), visible=not is_img2img)
                c["upscaler"] = gr.Dropdown(label=p["upscaler"].label, choices=_upscaler_names(), value=p["upscaler"].default,
                                            allow_custom_value=True, elem_id=self.elem_id("upscaler"), visible=not is_img2img)
            with gr.Row():
                c["denoise"] = ui.control(p["denoise"], self.elem_id("denoise"), visible=not is_img2img)
                c["steps"] = ui.control(p["steps"], self.elem_id("steps"), visible=not is_img2img)
            with gr.Row():
                c["mode"] = ui.control(p["mode"], self.elem_id("mode"))
                c["tiled_vae"] = ui.control(p["tiled_vae"], self.elem_id("tiled_vae"))
            with gr.Row():
                c["tile"] = ui.control(p["tile"], self.elem_id("tile"))
                c["offset_range"] = ui.control(p["offset_range"], self.elem_id("offset_range"))
            with gr.Row():
                c["reset_every"] = ui.control(p["reset_every"], self.elem_id("reset_every"))
                c["overlap"] = ui.control(p["overlap"], self.elem_id("overlap"))
                c["tile_batch"] = ui.control(p["tile_batch"], self.elem_id("tile_batch"))
            ordered = [c[name] for name in ASD_PARAMS.names()]
            ui.preset_row(asd.FEATURE_SPEC, ordered, self.elem_id("saved"))

        plan_inputs = [c[name] for name in PLAN_INPUTS]
        for component in plan_inputs:
            component.change(lambda *v: _plan_text(dict(zip(PLAN_INPUTS, v)), is_img2img), inputs=plan_inputs, outputs=[plan], show_progress=False)
        self.infotext_fields = ui.infotext_fields(ASD_PARAMS, c)
        self.paste_field_names = [ASD_PARAMS.infotext_key]
        return ordered

    def before_process(self, p, *args):
        runtime.guarded(FEATURE, p, lambda: asd.before_process(p, args, self.is_img2img))

    def process(self, p, *args):
        runtime.guarded(FEATURE, p, lambda: asd.process(p))

    def process_before_every_sampling(self, p, *args, **kwargs):
        runtime.guarded(FEATURE, p, lambda: asd.process_before_every_sampling(p))

    def postprocess_image(self, p, pp, *args):
        asd.postprocess_image(p, pp)

    def postprocess(self, p, processed, *args):
        asd.postprocess(p)


def _plan_text(values, is_img2img):
    """The chosen bucket, render size and tile grid for the current inputs (or what is wrong)."""
    try:
        full = ASD_PARAMS.validate(values, partial=True)
        merged = {**ASD_PARAMS.defaults(), **full}
        return asd.describe_plan(merged, is_img2img)
    except FreeDiffError as e:
        return f"**{e}**"


def _upscaler_names():
    names = list(getattr(shared, "latent_upscale_modes", {}) or ["Latent"])
    names += [u.name for u in getattr(shared, "sd_upscalers", []) or []]
    return names or ["Latent"]


def _on_ui_settings():
    section = ("freediff", "FreeDiff")
    shared.opts.add_option(asd.OPTION_MAX_MEGAPIXELS, shared.OptionInfo(
        asd.DEFAULT_MAX_MEGAPIXELS, "Any-Size Diffusion: largest output (megapixels); larger requests are refused before any work",
        gr.Slider, {"minimum": 1, "maximum": 400, "step": 0.1}, section=section))
    shared.opts.add_option(asd.OPTION_VAE_THRESHOLD, shared.OptionInfo(
        asd.DEFAULT_VAE_THRESHOLD, "Any-Size Diffusion: tiled VAE 'auto' tiles images larger than this side² (px)",
        gr.Slider, {"minimum": 512, "maximum": 8192, "step": 64}, section=section))


def _add_target_size_axis():
    xyz.add_axes(FEATURE, ASD_PARAMS, ["enabled", "tile", "offset_range", "mode", "denoise"])
    module = xyz._xyz_module()
    label = f"[{FEATURE}] Target size (WxH)"
    if module is None or any(o.label == label for o in module.axis_options):
        return

    def apply(p, x, xs):
        w, _, h = str(x).lower().replace("×", "x").partition("x")
        overrides.set_override(p, FEATURE, "width", w.strip())
        overrides.set_override(p, FEATURE, "height", h.strip())

    module.axis_options.append(module.AxisOption(label, str, apply))


runtime.register_callbacks()
freediff_app.register_callbacks()
script_callbacks.on_ui_settings(_on_ui_settings, name="freediff_asd_settings")
script_callbacks.on_before_ui(_add_target_size_axis, name="freediff_asd_xyz")
