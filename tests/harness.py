"""Drives the extension through the WebUI stand-in the way a user does: UI controls built by the
scripts' ``ui()``, args laid out as the WebUI lays them, generations through ``process_images`` or
through the HTTP API, images and infotext out."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
from contextlib import closing, contextmanager

import gradio as gr
import numpy as np
import torch
from PIL import Image

from modules import processing, script_callbacks, scripts, sd_hijack_unet, shared

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT_FILES = ["freediff_freeu.py", "freediff_asd.py", "freediff_fastcomposer.py"]


CONTROLNET_LIKE = os.path.join(ROOT, "tests", "webui_stub", "controlnet_like.py")
FORGE_CONTROLNET_LIKE = os.path.join(ROOT, "tests", "forge_stub", "forge_controlnet_like.py")
FORGE_MULTIDIFFUSION_LIKE = os.path.join(ROOT, "tests", "forge_stub", "forge_multidiffusion_like.py")
TILED_DIFFUSION_LIKE = os.path.join(ROOT, "tests", "webui_stub", "tiled_diffusion_like.py")
# other extensions' stand-ins, imported by module name so that tests reach the same classes the scripts are made of
STAND_INS = {CONTROLNET_LIKE: "controlnet_like", FORGE_CONTROLNET_LIKE: "forge_controlnet_like",
             FORGE_MULTIDIFFUSION_LIKE: "forge_multidiffusion_like", TILED_DIFFUSION_LIKE: "tiled_diffusion_like"}


def load_script_module(filename: str):
    """A script file of ours by name, or another extension's stand-in by its path."""
    if filename in STAND_INS:
        return importlib.import_module(STAND_INS[filename])
    path = filename if os.path.isabs(filename) else os.path.join(ROOT, "scripts", filename)
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WebUI:
    """Both tabs of a WebUI with our scripts loaded and their UI built (as at WebUI start)."""

    def __init__(self, script_files=None, sd_model=None):
        script_callbacks.clear_callbacks()
        sd_hijack_unet.apply()
        self.modules = [load_script_module(f) for f in (script_files if script_files is not None else SCRIPT_FILES)]
        self.runners = {}
        self.default_args = {}
        self.scripts = {}
        with gr.Blocks() as self.demo:
            for tab, is_img2img in (("txt2img", False), ("img2img", True)):
                runner = scripts.ScriptRunner()
                for module in self.modules:
                    for cls in _script_classes(module):
                        script = cls()
                        script.filename = module.__file__
                        with gr.Group():
                            runner.add_alwayson(script, is_img2img)
                        self.scripts[(tab, script.title())] = script
                self.runners[tab] = runner
                self.default_args[tab] = [None] + [c.value for c in runner.inputs[1:]]
        script_callbacks.ui_settings_callback()
        script_callbacks.before_ui_callback()
        # each WebUI keeps the callbacks its scripts registered (a bare one has none of ours)
        self.callbacks = {k: list(v) for k, v in script_callbacks.callback_map.items()}
        if sd_model is not None:
            shared.sd_model = sd_model

    def script_args(self, tab: str, per_script: dict | None = None) -> list:
        """The args of a generation: UI defaults, with ``{title: args}`` placed at each script's slots."""
        args = list(self.default_args[tab])
        for title, values in (per_script or {}).items():
            script = self.scripts[(tab, title)]
            for i, value in enumerate(values):
                args[script.args_from + i] = value
        return args

    def activate(self):
        for key, value in self.callbacks.items():
            script_callbacks.callback_map[key][:] = value

    def txt2img(self, per_script=None, **kwargs):
        self.activate()
        kwargs.setdefault("width", 64)
        kwargs.setdefault("height", 64)
        kwargs.setdefault("steps", 4)
        kwargs.setdefault("seed", 1)
        p = processing.StableDiffusionProcessingTxt2Img(scripts=self.runners["txt2img"], script_args=self.script_args("txt2img", per_script), **kwargs)
        with closing(p):
            return processing.process_images(p)

    def img2img(self, per_script=None, **kwargs):
        self.activate()
        kwargs.setdefault("width", 64)
        kwargs.setdefault("height", 64)
        kwargs.setdefault("steps", 4)
        kwargs.setdefault("seed", 1)
        kwargs.setdefault("init_images", [make_image(kwargs["width"], kwargs["height"])])
        p = processing.StableDiffusionProcessingImg2Img(scripts=self.runners["img2img"], script_args=self.script_args("img2img", per_script), **kwargs)
        with closing(p):
            return processing.process_images(p)

    def api_client(self):
        from fastapi import FastAPI
        from fastapi.testclient import TestClient

        from modules.api.api import Api

        self.activate()
        app = FastAPI()
        Api(app, self.runners, self.default_args)
        script_callbacks.app_started_callback(None, app)
        return TestClient(app, raise_server_exceptions=False)


def _script_classes(module):
    """As the WebUI's loader: every Script subclass in the module's namespace, imported ones included."""
    return [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, scripts.Script)]


def make_image(width=64, height=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 5.0)], axis=-1)
    noise = rng.normal(0, 0.05, size=base.shape)
    return Image.fromarray((np.clip(base + noise, 0, 1) * 255).astype(np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def image_from_b64(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def infotexts_of(api_response: dict) -> list[str]:
    return json.loads(api_response["info"])["infotexts"]


def same_images(a, b) -> bool:
    return len(a.images) == len(b.images) and all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a.images, b.images))


@contextmanager
def unet_fails_at_call(unet: torch.nn.Module, n: int, message: str = "out of memory (simulated)"):
    """Makes the ``n``-th U-Net forward inside the block raise RuntimeError(message)."""
    calls = []

    def explode(module, args):
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError(message)

    handle = unet.register_forward_pre_hook(explode)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def unet_interrupts_at_call(unet: torch.nn.Module, n: int):
    """Presses the WebUI's Interrupt at the ``n``-th U-Net forward inside the block."""
    calls = []

    def interrupt(module, args):
        calls.append(1)
        if len(calls) == n:
            shared.state.interrupt()

    handle = unet.register_forward_pre_hook(interrupt)
    try:
        yield
    finally:
        handle.remove()
        shared.state.reset()


def unet_forward_counter(unet: torch.nn.Module, record: list, probe):
    """Records ``probe()`` at each U-Net forward; returns the hook handle."""
    return unet.register_forward_pre_hook(lambda module, args: record.append(probe()))


def unet_contexts(run):
    """The result of ``run()`` and the cross-attention context of each U-Net call meanwhile (the host's U-Net: ldm's
    under A1111, Forge's under its patcher)."""
    from lib_freediff.webui import host

    record = []
    unet = host.current().unet(shared.sd_model)
    handle = unet.register_forward_pre_hook(lambda m, a, kw: record.append(kw["context"].detach().clone()), with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return result, record


def changed_tokens(contexts_a, contexts_b):
    """Per U-Net call: the (row, token) pairs whose vectors differ."""
    return [[(r, t) for r, t in (a != b).any(-1).nonzero().tolist()] for a, b in zip(contexts_a, contexts_b)]


def augmented_steps(contexts_a, contexts_b, steps: int, calls_per_step: int) -> tuple[list, list]:
    """(the sampler step of each U-Net call whose context differs between two runs, the step of every call): a
    second-order sampler makes ``calls_per_step`` calls a step, one at its last (it ends at sigma 0)."""
    differs = [not torch.equal(a, b) for a, b in zip(contexts_a, contexts_b)]
    assert len(differs) == steps * calls_per_step - (calls_per_step - 1)
    step_of_call = [min(i // calls_per_step, steps - 1) for i in range(len(differs))]
    return [s for s, d in zip(step_of_call, differs) if d], step_of_call


def prompt_encoder():
    """The host's text encoding of the loaded model: A1111's ``cond_stage_model``, Forge's ``text_processing_engine``
    (both have ``tokenize`` and ``tokenize_line`` and encode a list of texts when called)."""
    return getattr(shared.sd_model, "text_processing_engine", None) or shared.sd_model.cond_stage_model


def noun_positions(clean: str, nouns: list) -> list:
    """Where the host's own tokenization of ``clean`` puts each noun's last token (each must occur once)."""
    encoder = prompt_encoder()
    chunks, _ = encoder.tokenize_line(clean)
    flat = [tok for chunk in chunks for tok in chunk.tokens]
    out = []
    for noun in nouns:
        last = encoder.tokenize([noun])[0][-1]
        hits = [i for i, tok in enumerate(flat) if tok == last]
        assert len(hits) == 1, (noun, hits)
        out.append(hits[0])
    return out
