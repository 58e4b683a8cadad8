"""The WebUI stand-in's signatures equal the real v1.10.1 source's.

Set FREEDIFF_WEBUI_SRC to a WebUI checkout (e.g. a clone of AUTOMATIC1111/stable-diffusion-webui at
v1.10.1) to run; skipped otherwise. Only what the extension and its tests touch is compared.
"""

import ast
import os

import pytest

SRC = os.environ.get("FREEDIFF_WEBUI_SRC")
STUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webui_stub")
pytestmark = pytest.mark.skipif(not SRC, reason="set FREEDIFF_WEBUI_SRC to a WebUI v1.10.1 checkout")

# (file, qualified name) pairs whose argument lists must match
CHECKED = [
    ("modules/scripts.py", name) for name in (
        "Script.title", "Script.ui", "Script.show", "Script.setup", "Script.before_process", "Script.process",
        "Script.before_process_batch", "Script.process_before_every_sampling", "Script.process_batch",
        "Script.postprocess_batch", "Script.post_sample", "Script.postprocess_image", "Script.postprocess",
        "Script.before_hr", "Script.elem_id", "ScriptRunner.before_process", "ScriptRunner.process",
        "ScriptRunner.before_hr", "ScriptRunner.postprocess", "ScriptRunner.process_before_every_sampling")
] + [
    ("modules/script_callbacks.py", name) for name in (
        "CFGDenoiserParams.__init__", "CFGDenoisedParams.__init__", "AfterCFGCallbackParams.__init__",
        "on_cfg_denoiser", "on_app_started", "on_ui_settings", "on_before_ui", "on_script_unloaded",
        "cfg_denoiser_callback", "app_started_callback", "remove_callbacks_for_function", "add_callback")
] + [
    ("modules/sd_samplers_cfg_denoiser.py", "CFGDenoiser.forward"),
    ("modules/sd_samplers_cfg_denoiser.py", "CFGDenoiser.combine_denoised"),
    ("modules/sd_samplers_common.py", "Sampler.callback_state"),
    ("modules/sd_samplers_common.py", "Sampler.launch_sampling"),
    ("modules/sd_samplers_common.py", "Sampler.initialize"),
    ("modules/sd_samplers_common.py", "setup_img2img_steps"),
    ("modules/sd_samplers_common.py", "SamplerData.total_steps"),
    ("modules/sd_samplers_kdiffusion.py", "KDiffusionSampler.sample"),
    ("modules/sd_samplers_kdiffusion.py", "KDiffusionSampler.sample_img2img"),
    ("modules/sd_samplers_kdiffusion.py", "KDiffusionSampler.get_sigmas"),
    ("modules/processing.py", "process_images"),
    ("modules/processing.py", "create_infotext"),
    ("modules/processing.py", "StableDiffusionProcessingTxt2Img.sample_hr_pass"),
    ("modules/processing.py", "StableDiffusionProcessingTxt2Img.calculate_target_resolution"),
    ("modules/ui_components.py", "InputAccordion.__init__"),
    ("modules/ui_components.py", "InputAccordion.extra"),
    ("modules/infotext_utils.py", "quote"),
    ("modules/infotext_utils.py", "unquote"),
    ("modules/infotext_utils.py", "parse_generation_parameters"),
    ("modules/processing.py", "StableDiffusionProcessing.setup_conds"),
    ("modules/prompt_parser.py", "SdConditioning.__init__"),
    ("modules/prompt_parser.py", "get_multicond_prompt_list"),
    ("modules/prompt_parser.py", "get_learned_conditioning_prompt_schedules"),
    ("modules/api/api.py", "api_middleware"),
]


def signature(path: str, qualname: str):
    tree = ast.parse(open(path, encoding="utf8").read())
    scope = tree.body
    *outer, name = qualname.split(".")
    for cls in outer:
        scope = next(n for n in scope if isinstance(n, ast.ClassDef) and n.name == cls).body
    fn = next((n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if fn is None:
        return None
    a = fn.args
    return ([x.arg for x in a.posonlyargs + a.args], a.vararg and a.vararg.arg, [x.arg for x in a.kwonlyargs], a.kwarg and a.kwarg.arg)


@pytest.mark.parametrize("path,qualname", CHECKED)
def test_signature(path, qualname):
    real = signature(os.path.join(SRC, path), qualname)
    stub = signature(os.path.join(STUB, path), qualname)
    assert real is not None, f"{qualname} is not in the real {path}"
    assert stub == real, f"{path}:{qualname}: stub {stub} != real {real}"


def test_infotext_regex_is_the_real_one():
    from modules import infotext_utils

    real = open(os.path.join(SRC, "modules/infotext_utils.py"), encoding="utf8").read()
    assert f"re_param_code = r'{infotext_utils.re_param_code}'" in real


def _decorators(path: str, function: str):
    tree = ast.parse(open(path, encoding="utf8").read())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return [ast.unparse(d) for n in ast.walk(fn) if isinstance(n, ast.AsyncFunctionDef) for d in n.decorator_list]


def test_api_middleware_stack_is_the_real_one():
    """The same middleware layers and exception handlers, in the same order (which decides how an error escaping
    the endpoint is wrapped and answered)."""
    path = "modules/api/api.py"
    assert _decorators(os.path.join(STUB, path), "api_middleware") == _decorators(os.path.join(SRC, path), "api_middleware")
