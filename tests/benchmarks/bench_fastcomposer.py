#!/usr/bin/env python
"""Overhead of FastComposer conditioning over the same generation without it (not a pytest test).

Both runs: 20 Euler steps (k-diffusion ``sample_euler`` over ``CompVisDenoiser``, the WebUI's path),
classifier-free guidance as one batch of 2 (cond + uncond), a 64x64 latent (512x512 image), the same
seed and the same text conditioning (text encoding is identical in both runs and not timed).
FastComposer adds: preprocessing and CLIP ViT-L/14 encoding of the reference images (once), the
post-fuse MLP at the marked tokens (once, at the delayed-switch step), and the per-step choice between
text-only and augmented conditioning.

    .venv/bin/python tests/benchmarks/bench_fastcomposer.py                 # CPU, reduced U-Net
    .venv/bin/python tests/benchmarks/bench_fastcomposer.py --full --device cuda

Weights are random (timing only). Prints a markdown table with the ratio and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for path in (ROOT, os.path.join(ROOT, "tests", "webui_stub")):
    if path not in sys.path:
        sys.path.insert(0, path)

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tiny_sd import UNetAsLDM  # noqa: E402


def build_unet(full: bool, context_dim: int):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    if full:  # SD1.5 (v1-inference.yaml)
        cfg = dict(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_resolutions=[4, 2, 1],
                   num_heads=8)
    else:  # same topology and latent size; 64 channels, 1 res block, 64-wide heads (1 head at 64x64)
        cfg = dict(model_channels=64, channel_mult=(1, 2, 4, 4), num_res_blocks=1, attention_resolutions=[4, 2, 1],
                   num_head_channels=64)
    return UNetModel(image_size=32, in_channels=4, out_channels=4, use_spatial_transformer=True,
                     transformer_depth=1, context_dim=context_dim, use_checkpoint=False, legacy=False, **cfg)


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    s = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    if device.startswith("cuda"):
        s += f", GPU {torch.cuda.get_device_name(0)}"
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="real SD1.5 U-Net config (slow on CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.7)
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=None, help="timed runs of each (best of); default 2 on CPU, 5 on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    ap.add_argument("--small-encoder", action="store_true", help="a tiny image encoder instead of ViT-L/14")
    args = ap.parse_args(argv)

    from k_diffusion.external import CompVisDenoiser
    from k_diffusion.sampling import sample_euler

    from lib_freediff.fastcomposer import (FastComposerModel, delayed_switch_step, preprocess_image,
                                           subject_positions)
    from lib_freediff.fastcomposer.loader import _no_init
    from lib_freediff.fastcomposer.model import vision_config

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    dtype = torch.float16 if cuda else torch.float32
    repeats = args.repeats or (5 if cuda else 2)
    D = 768

    torch.manual_seed(0)
    with _no_init():
        unet = build_unet(args.full, D)
        vcfg = vision_config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                             patch_size=32, projection_dim=D) if args.small_encoder else vision_config()
        fc = FastComposerModel.from_config(vcfg, embed_dim=D)
    for p in list(unet.parameters()) + list(fc.parameters()):  # cheap random weights
        with torch.no_grad():
            p.normal_(0, 0.02)
    unet = unet.to(device, dtype).eval().requires_grad_(False)
    fc = fc.to(device, dtype)
    model = CompVisDenoiser(UNetAsLDM(unet).to(device)).to(device)

    import tempfile

    from tests.fastcomposer.fixtures import build_clip_tokenizer

    tok = build_clip_tokenizer(os.path.join(tempfile.gettempdir(), "freediff-bench-clip-tokenizer"))
    tokenize = lambda s: tok(s, add_special_tokens=False, truncation=False)["input_ids"]  # noqa: E731
    nouns = ["man", "woman", "dog", "cat", "child", "robot"][: args.subjects]
    prompt = " and ".join(f"a {n} img" for n in nouns) + " at the beach, golden hour, detailed photo"
    images = [Image.new("RGB", (640, 480), (40 * i, 90, 160)) for i in range(args.subjects)]
    text = torch.randn(1, 77, D, device=device, dtype=dtype)
    uncond = torch.randn(1, 77, D, device=device, dtype=dtype)
    switch = delayed_switch_step(args.alpha, args.steps)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def cfg_denoiser(cond_for_step):
        calls = {"i": 0}

        def f(x, sigma):
            c = cond_for_step(calls["i"])
            calls["i"] += 1
            out = model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([c, uncond]))
            d_c, d_u = out.chunk(2)
            return d_u + 7.0 * (d_c - d_u)
        return f

    sigmas = model.get_sigmas(args.steps).to(device)

    def run_baseline():
        torch.manual_seed(1)
        x = torch.randn(1, 4, 64, 64, device=device, dtype=dtype) * sigmas[0]
        t0 = time.perf_counter()
        sample_euler(cfg_denoiser(lambda i: text), x, sigmas, disable=True)
        sync()
        return {"sample": time.perf_counter() - t0}

    def run_fastcomposer():
        times = {}
        torch.manual_seed(1)
        x = torch.randn(1, 4, 64, 64, device=device, dtype=dtype) * sigmas[0]
        sync()
        t0 = time.perf_counter()
        layout = subject_positions(prompt, tokenize)
        pix = torch.stack([preprocess_image(im) for im in images])
        emb = fc.encode_subjects(pix)
        sync()
        times["encode"] = time.perf_counter() - t0
        state = {"aug": None, "fuse": 0.0, "positions": layout.positions}

        def cond_for_step(i):
            if i < switch:
                return text
            if state["aug"] is None:
                sync()
                tf = time.perf_counter()
                state["aug"] = fc.fuse(text, emb, [state["positions"]])
                sync()
                state["fuse"] = time.perf_counter() - tf
            return state["aug"]

        t1 = time.perf_counter()
        sample_euler(cfg_denoiser(cond_for_step), x, sigmas, disable=True)
        sync()
        times["sample"] = time.perf_counter() - t1 - state["fuse"]
        times["fuse"] = state["fuse"]
        return times

    with torch.no_grad():
        # warm-up (lazy inits, cuDNN autotune): one short run of each
        s_full = sigmas
        sigmas = s_full[-3:]
        run_baseline()
        run_fastcomposer()
        sigmas = s_full
        base, fcr = [], []
        for _ in range(repeats):  # interleaved, side by side
            base.append(run_baseline())
            fcr.append(run_fastcomposer())

    best = lambda rows, k: min(r[k] for r in rows)  # noqa: E731  (best-of: least disturbed by other load)
    b_total = best(base, "sample")
    f_enc, f_fuse, f_sample = best(fcr, "encode"), best(fcr, "fuse"), best(fcr, "sample")
    f_total = min(r["encode"] + r["fuse"] + r["sample"] for r in fcr)
    unet_desc = ("SD1.5 U-Net (320 ch, 2 res blocks, 8 heads)" if args.full
                 else "reduced SD1.5-topology U-Net (64 ch, 1 res block, 64-wide heads)")
    enc_desc = "tiny encoder" if args.small_encoder else "CLIP ViT-L/14"
    print(f"### FastComposer overhead: {args.steps} Euler steps, CFG batch 2, 64x64 latent, {unet_desc}, "
          f"{args.subjects} subject(s) with {enc_desc}, alpha {args.alpha} (switch at step {switch}), "
          f"{str(dtype).replace('torch.', '')} on {device.type}, best of {repeats} interleaved runs\n")
    print("| stage | without FastComposer (s) | with FastComposer (s) |")
    print("|---|---:|---:|")
    print(f"| markers + token positions, preprocess + encode {args.subjects} image(s) (once) | – | {f_enc:.3f} |")
    print(f"| post-fuse at the switch step (once) | – | {f_fuse * 1000:.2f} ms |")
    print(f"| {args.steps} Euler steps | {b_total:.3f} | {f_sample:.3f} |")
    print(f"| **total** | **{b_total:.3f}** | **{f_total:.3f}** |")
    print(f"| **ratio** (measured totals) | 1.00 | **{f_total / b_total:.3f}** |")
    print(f"| added work only: (encode + fuse) / baseline | – | +{100 * (f_enc + f_fuse) / b_total:.1f} % |")
    print(f"\nMachine: {machine(args.device)}")


if __name__ == "__main__":
    main()
