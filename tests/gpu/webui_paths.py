"""The WebUI stand-in's generation paths (tests/harness.py: the scripts, their UI args, process_images, k-diffusion)
on the check's device, in float32 and in half precision: FreeU with hires fix, Any-Size Diffusion (FSTD tiles,
tiled VAE, an image upscaler between the passes), FastComposer with two subjects. Compared: the decoded images
before they are clamped to [-1, 1] and quantised (NaN survives up to there)."""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile

import torch

from common import Run, requires

K_GENERATION = 150  # a whole generation: the U-Net's error carried through every sampler step and both passes
FREEU, ASD, FASTCOMPOSER = "FreeU", "Any-Size Diffusion", "FastComposer"


@contextlib.contextmanager
def webui_device(device: str, dtype: torch.dtype):
    """The stand-in's ``devices`` and ``shared.device`` as the WebUI sets them for ``device`` and ``dtype``, and
    autocast around the generation as the WebUI's ``devices.autocast()`` (off in float32)."""
    from modules import devices, shared

    names = ("device", "dtype", "dtype_unet", "dtype_vae")
    saved = [getattr(devices, n) for n in names] + [shared.device]
    devices.device = shared.device = torch.device(device)
    devices.dtype = devices.dtype_unet = devices.dtype_vae = dtype
    try:
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            yield
    finally:
        for n, v in zip(names, saved):
            setattr(devices, n, v)
        shared.device = saved[-1]


def decoded(generate, sd_model, device: str, dtype: torch.dtype) -> torch.Tensor:
    """The VAE output of ``generate()`` run over ``sd_model`` (as ``processing.latents_to_images`` receives it)."""
    from modules import processing, shared

    record = []
    original = processing.latents_to_images

    def capture(x):
        record.append(x.detach().float().cpu())
        return original(x)

    shared.sd_model = sd_model
    processing.latents_to_images = capture
    try:
        with webui_device(device, dtype):
            generate()
    finally:
        processing.latents_to_images = original
    return torch.cat(record)


def write_fastcomposer_file(model: torch.nn.Module) -> str:
    """``model`` (image encoder + post-fuse MLP) as a file in the stand-in's models/fastcomposer: the part of the
    release the extension reads."""
    from safetensors.torch import save_file

    from lib_freediff.webui import fastcomposer as fc

    os.makedirs(fc.models_dir(), exist_ok=True)
    path = os.path.join(fc.models_dir(), "fastcomposer.safetensors")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}, path)
    return path


def generations(run: Run):
    requires("gradio", "k_diffusion", "transformers", "safetensors", "harness")
    from harness import WebUI, make_image
    from modules import shared
    from precision_checks import fastcomposer_model
    from tiny_sd import TinySD, to_webui_precision

    p, rep, dev = run.profile, run.report, run.profile.device
    spec = p.unets[0]
    # the float32 masters themselves: the extension leaves no hook or patch on them after a generation
    sd = TinySD("sd1", unet=run.models.unet(spec, torch.float32), context_dim=spec.context_dim)
    if p.webui_full:
        sd.first_stage_model = run.models.vae(torch.float32)
    sd = sd.to(dev)
    webui = WebUI(sd_model=sd)
    side = 512 if p.webui_full else 64
    prompt = "a mountain lake at dawn"
    # targets whose first pass has their aspect: the image upscaler's resize then keeps multiples of 8, which tiled
    # encode needs (1536×1024 from a 1024×640 bucket resizes to 1638×1024 and stops there: a known defect)
    asd = (dict(width=1536, height=1152, buckets="paper", tile=512, offset_range=256) if p.webui_full else
           dict(width=192, height=128, buckets="64x64, 96x64, 64x96, 128x64", tile=128, offset_range=64))
    cases = [
        ("webui.freeu", f"txt2img {side}², hires fix 2× (Latent), FreeU v2 in both passes from 34 % of the steps "
                        "(gated off before)",
         lambda: webui.txt2img({FREEU: [dict(enabled=True, start=0.34)]}, prompt=prompt, width=side, height=side,
                               steps=6 if p.webui_full else 3, enable_hr=True, hr_scale=2,
                               hr_second_pass_steps=3 if p.webui_full else 2)),
        ("webui.asd", f"txt2img to {asd['width']}×{asd['height']} with ASD: FSTD tiles of {asd['tile']} px, tiled VAE on, "
                      "an image upscaler between the passes",
         lambda: webui.txt2img({ASD: [dict(enabled=True, **asd, steps=3 if p.webui_full else 2, denoise=0.5,
                                           tiled_vae="on", upscaler="Lanczos")]}, prompt=prompt,
                               steps=6 if p.webui_full else 3)),
    ]
    for check_id, what, generate in cases:
        ref = decoded(generate, sd, dev, torch.float32)
        for dtype in p.half_dtypes:
            half = to_webui_precision(copy.deepcopy(sd), dev, dtype)
            out = decoded(generate, half, dev, dtype)
            rep.compare("WebUI stand-in", check_id, f"{what} ({spec.name} U-Net): decoded image", out, ref, dtype, K_GENERATION)
            del half

    # FastComposer: the tests' tiny release (its text encoder is the WebUI's CLIP wrapper, 32 wide) on every device
    from tests.fastcomposer import fixtures

    write_fastcomposer_file(fastcomposer_model(full=False))
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        clip = fixtures.webui_text_encoder(fixtures.build_clip_tokenizer(tokenizer_dir))
    sd_fc = TinySD("sd1", context_dim=fixtures.EMBED_DIM, cond_stage_model=clip).to(dev)
    images = [make_image(48, 64, seed=11), make_image(64, 40, seed=12)]

    def fastcomposer_txt2img():
        webui.txt2img({FASTCOMPOSER: [True, "", images, 0.7, True]}, prompt="a man img and a woman img at the beach",
                      width=64, height=64, steps=6)

    ref = decoded(fastcomposer_txt2img, sd_fc, dev, torch.float32)
    for dtype in p.half_dtypes:
        half = to_webui_precision(copy.deepcopy(sd_fc), dev, dtype)
        out = decoded(fastcomposer_txt2img, half, dev, dtype)
        rep.compare("WebUI stand-in", "webui.fastcomposer", "txt2img 64², 2 subjects, α = 0.7, 6 steps (tiny SD1 and "
                    "FastComposer): decoded image", out, ref, dtype, K_GENERATION)
    shared.sd_model = None  # lets the models go before the speed sections
