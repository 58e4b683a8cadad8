"""Forge's stand-in (``tests/forge_stub``, with the A1111 stand-in under it) has the signatures of the real Forge.

Set FREEDIFF_FORGE_SRC to a checkout of lllyasviel/stable-diffusion-webui-forge (main) to run; skipped otherwise.
Only what the extension and its tests touch is compared: the patchers, the sampling function, the pass's objects,
the files of ``modules`` Forge changed, and the built-in ControlNet and MultiDiffusion scripts the stand-ins imitate.
"""

import ast
import os

import pytest

from test_stub_matches_webui import signature

SRC = os.environ.get("FREEDIFF_FORGE_SRC")
TESTS = os.path.dirname(os.path.abspath(__file__))
FORGE_STUB = os.path.join(TESTS, "forge_stub")
A1111_STUB = os.path.join(TESTS, "webui_stub")
pytestmark = pytest.mark.skipif(not SRC, reason="set FREEDIFF_FORGE_SRC to a Forge checkout")

CONTROLNET = "extensions-builtin/sd_forge_controlnet/scripts/controlnet.py"
MULTIDIFFUSION = "extensions-builtin/sd_forge_multidiffusion/scripts/forge_multidiffusion.py"

# (real file, real name[, stand-in file, stand-in name]) whose argument lists must match
CHECKED = [
    ("backend/patcher/base.py", name) for name in (
        "ModelPatcher.clone", "ModelPatcher.memory_required", "ModelPatcher.set_model_unet_function_wrapper",
        "ModelPatcher.set_model_vae_encode_wrapper", "ModelPatcher.set_model_vae_decode_wrapper",
        "ModelPatcher.set_model_patch", "ModelPatcher.set_model_input_block_patch", "ModelPatcher.set_model_output_block_patch")
] + [
    ("backend/patcher/unet.py", name) for name in (
        "UnetPatcher.clone", "UnetPatcher.add_patched_controlnet", "UnetPatcher.list_controlnets",
        "UnetPatcher.set_memory_peak_estimation_modifier")
] + [
    ("backend/patcher/vae.py", name) for name in (
        "VAE.__init__", "VAE.clone", "VAE.decode_inner", "VAE.decode", "VAE.encode_inner", "VAE.encode")
] + [
    ("backend/patcher/controlnet.py", name) for name in (
        "apply_controlnet_advanced", "compute_controlnet_weighting", "broadcast_image_to", "ControlBase.set_cond_hint",
        "ControlBase.set_previous_controlnet", "ControlBase.control_merge", "ControlNet.__init__", "ControlNet.get_control",
        "ControlNet.copy")
] + [
    ("backend/sampling/sampling_function.py", name) for name in (
        "compute_cond_mark", "compute_cond_indices", "calc_cond_uncond_batch", "sampling_function")
] + [
    ("backend/modules/k_model.py", "KModel.apply_model"),
    ("backend/modules/k_model.py", "KModel.memory_required"),
    ("backend/nn/unet.py", "IntegratedUNet2DConditionModel.forward", "forge_sd.py", "ForgeUNet.forward"),
    ("backend/nn/vae.py", "DiagonalGaussianDistribution.__init__"),
    ("backend/nn/vae.py", "DiagonalGaussianDistribution.sample"),
    ("backend/nn/vae.py", "IntegratedAutoencoderKL.encode", "forge_sd.py", "ForgeAutoencoder.encode"),
    ("backend/nn/vae.py", "IntegratedAutoencoderKL.process_in", "forge_sd.py", "ForgeAutoencoder.process_in"),
    ("backend/nn/vae.py", "IntegratedAutoencoderKL.process_out", "forge_sd.py", "ForgeAutoencoder.process_out"),
    ("backend/misc/image_resize.py", "adaptive_resize"),
    ("backend/memory_management.py", "get_torch_device"),
    ("backend/memory_management.py", "load_model_gpu"),
    ("backend/memory_management.py", "load_models_gpu"),
    ("backend/diffusion_engine/base.py", "ForgeObjects.__init__"),
    ("backend/diffusion_engine/base.py", "ForgeObjects.shallow_copy"),
    ("backend/diffusion_engine/base.py", "ForgeDiffusionEngine.get_first_stage_encoding"),
    ("backend/diffusion_engine/sd15.py", "StableDiffusion.encode_first_stage", "forge_sd.py", "ForgeTinySD.encode_first_stage"),
    ("backend/diffusion_engine/sd15.py", "StableDiffusion.decode_first_stage", "forge_sd.py", "ForgeTinySD.decode_first_stage"),
    ("backend/diffusion_engine/sd15.py", "StableDiffusion.get_learned_conditioning", "forge_sd.py", "ForgeTinySD.get_learned_conditioning"),
    ("modules/sd_samplers_cfg_denoiser.py", "CFGDenoiser.forward", "modules/sd_samplers_cfg_denoiser.py", "forward"),
    ("modules/scripts.py", "PostprocessImageArgs.__init__"),
    ("modules/scripts.py", "ScriptRunner.process_before_every_sampling"),
    ("modules/ui_components.py", "InputAccordionImpl.__init__"),
    ("modules/ui_components.py", "InputAccordion"),
    ("modules/processing.py", "process_images_inner"),
    ("modules/processing.py", "StableDiffusionProcessingTxt2Img.sample", "modules/processing.py", "_txt2img_sample"),
    ("modules/processing.py", "StableDiffusionProcessingTxt2Img.sample_hr_pass", "modules/processing.py", "_sample_hr_pass"),
    ("modules/processing.py", "StableDiffusionProcessingImg2Img.sample", "modules/processing.py", "_img2img_sample"),
    (CONTROLNET, "ControlNetForForgeOfficial.title", "forge_controlnet_like.py", "ControlNetForForgeScript.title"),
    (CONTROLNET, "ControlNetForForgeOfficial.get_enabled_units", "forge_controlnet_like.py", "ControlNetForForgeScript.get_enabled_units"),
    (CONTROLNET, "ControlNetForForgeOfficial.process", "forge_controlnet_like.py", "ControlNetForForgeScript.process"),
    (CONTROLNET, "ControlNetForForgeOfficial.process_before_every_sampling", "forge_controlnet_like.py",
     "ControlNetForForgeScript.process_before_every_sampling"),
    (MULTIDIFFUSION, "MultiDiffusionForForge.title", "forge_multidiffusion_like.py", "MultiDiffusionForForge.title"),
] + [
    ("backend/text_processing/classic_engine.py", name) for name in (
        "CLIPEmbeddingForTextualInversion.__init__", "ClassicTextProcessingEngine.__init__",
        "ClassicTextProcessingEngine.empty_chunk", "ClassicTextProcessingEngine.tokenize",
        "ClassicTextProcessingEngine.encode_with_transformers", "ClassicTextProcessingEngine.tokenize_line",
        "ClassicTextProcessingEngine.process_texts", "ClassicTextProcessingEngine.__call__",
        "ClassicTextProcessingEngine.process_tokens")
] + [
    ("backend/text_processing/parsing.py", "parse_prompt_attention"),
    ("backend/text_processing/emphasis.py", "get_current_option"),
    ("backend/text_processing/textual_inversion.py", "Embedding.__init__"),
    ("backend/text_processing/textual_inversion.py", "EmbeddingDatabase.__init__"),
    ("backend/text_processing/textual_inversion.py", "EmbeddingDatabase.register_embedding"),
    ("backend/text_processing/textual_inversion.py", "EmbeddingDatabase.find_embedding_at_position", "modules/sd_hijack_clip.py",
     "EmbeddingDatabase.find_embedding_at_position"),
]


def stand_in(path: str, qualname: str):
    """The stand-in's definition: Forge's stand-in first, then (for ``modules``) the A1111 stand-in under it, as the
    ``modules`` package's path does."""
    for root in (FORGE_STUB, A1111_STUB):
        found = os.path.join(root, path)
        if os.path.exists(found):
            try:
                return signature(found, qualname)  # None: no such function in the class
            except StopIteration:  # no such class in this file
                continue
    return None


@pytest.mark.parametrize("entry", CHECKED, ids=[f"{e[0]}:{e[1]}" for e in CHECKED])
def test_signature(entry):
    path, qualname, stub_path, stub_name = entry if len(entry) == 4 else (*entry, *entry)
    real = signature(os.path.join(SRC, path), qualname)
    stub = stand_in(stub_path, stub_name)
    assert real is not None, f"{qualname} is not in the real {path}"
    assert stub is not None, f"{stub_name} is not in the stand-in's {stub_path}"
    assert stub == real, f"{path}:{qualname}: stand-in {stub} != real {real}"


def _called(path: str, qualname: str) -> set:
    """What the function ``qualname`` of ``path`` calls (as written)."""
    scope = ast.parse(open(path, encoding="utf8").read()).body
    *outer, name = qualname.split(".")
    for cls in outer:
        scope = next(n for n in scope if isinstance(n, ast.ClassDef) and n.name == cls).body
    fn = next(n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name)
    return {ast.unparse(n.func) for n in ast.walk(fn) if isinstance(n, ast.Call)}


def test_api_answers_errors_without_the_webui_middleware():
    """Forge's API leaves out A1111's middleware and handlers (FastAPI's own answer errors): so does the stand-in."""
    assert "api_middleware" not in _called(os.path.join(SRC, "modules/api/api.py"), "Api.__init__")
    assert "api_middleware" not in _called(os.path.join(FORGE_STUB, "modules/api/api.py"), "_init")


def test_multidiffusion_title_and_enabled_argument_are_the_adapters():
    """The Forge adapter refuses Any-Size Diffusion beside MultiDiffusion Integrated by its title and the position of
    its 'enabled' argument: both as the real script has them."""
    source = open(os.path.join(SRC, MULTIDIFFUSION), encoding="utf8").read()
    ui = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "ui")
    returned = [e.id for e in next(n for n in ast.walk(ui) if isinstance(n, ast.Return)).value.elts]
    adapter = ast.parse(open(os.path.join(TESTS, "..", "lib_freediff", "webui", "forge", "__init__.py"), encoding="utf8").read())
    peers = next(ast.literal_eval(n.value) for n in adapter.body if isinstance(n, ast.Assign) and n.targets[0].id == "PEER_TILERS")
    (title, index), = peers.items()
    assert f'return "{title}"' in source and returned[index] == "enabled"


def test_sd15_encodes_prompts_through_its_text_engine_with_a_fixed_word_wrap():
    """What FastComposer's Forge adapter relies on: SD1.5's ``get_learned_conditioning`` runs ``text_processing_engine``
    (a ClassicTextProcessingEngine, not a module), whose word wrap is fixed at 20 tokens (the adapter's constant), whose
    emphasis is read from the option at each call, and whose parser reads "None" literally."""
    adapter = ast.parse(open(os.path.join(TESTS, "..", "lib_freediff", "webui", "forge", "fastcomposer.py"), encoding="utf8").read())
    backtrack = next(ast.literal_eval(n.value) for n in adapter.body
                     if isinstance(n, ast.Assign) and n.targets[0].id == "COMMA_PADDING_BACKTRACK")
    assert "self.text_processing_engine" in _called(os.path.join(SRC, "backend/diffusion_engine/sd15.py"), "StableDiffusion.get_learned_conditioning")
    engine = open(os.path.join(SRC, "backend/text_processing/classic_engine.py"), encoding="utf8").read()
    assert "class ClassicTextProcessingEngine:" in engine  # no nn.Module: no hooks on it
    assert f"comma_padding_backtrack = {backtrack}\n" in engine
    assert "self.emphasis = emphasis.get_current_option(opts.emphasis)()" in engine
    assert 'if emphasis == "None":' in open(os.path.join(SRC, "backend/text_processing/parsing.py"), encoding="utf8").read()
