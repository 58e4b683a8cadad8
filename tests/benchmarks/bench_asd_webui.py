"""Side by side in a running WebUI: img2img at the target size with Any-Size Diffusion's FSTD vs the tilers WebUI
users pick instead — on AUTOMATIC1111, Tiled Diffusion (multidiffusion-upscaler: MultiDiffusion and Mixture of
Diffusers, img2img defaults) and Ultimate SD Upscale (its defaults); on Forge, its built-in MultiDiffusion Integrated
(MultiDiffusion and Mixture of Diffusers at its defaults: 768-px tiles, overlap 64, 4 tiles a call) — same init
image, model, steps, denoise, seed and sampler. The methods a WebUI lacks are skipped.

Per method: wall time of the request, U-Net work counted by the extension's opt-in counter (start the WebUI with
``FREEDIFF_DIAGNOSTICS=1``: a forward pre-hook on the U-Net sums each call's input area), and the server's peak RSS
growth during the request (``/proc/PID/clear_refs`` then ``VmHWM``; needs the server on this machine). Methods are
interleaved round by round so a busy machine slows them alike.

    FREEDIFF_WEBUI_URL=http://127.0.0.1:7861 python tests/benchmarks/bench_asd_webui.py --sizes 1024x1024,1000x600

U-Net work is given as untiled-equivalent steps: total input cells ÷ (CFG batch × latent area × sampler steps), so
1.00 is every latent cell evaluated once per step. The counter also times the U-Net's forwards and the sampler steps
(U-Net calls plus the tiler's own work around them), which splits the wall into step time (grows with the steps) and
the rest (VAE, conditioning, set-up: fixed per image). A run of few steps, affordable on a CPU, is then projected to
a usual hires pass (``--project-steps``, default 20 × the denoise): rest + step time ÷ sampled steps × projected
steps. For FSTD that over-counts (its first step costs up to 1.3× a steady one), so the projected ratios lean to the
peers' side. A peer missing from the WebUI is reported and skipped.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import time

ASD = "Any-Size Diffusion"
DIAG = "/freediff/v1/diagnostics/unet"


def client(url):
    import httpx

    return httpx.Client(base_url=url, timeout=7200)


def init_image(w, h):
    """A deterministic picture with smooth gradients and hard edges (seams and detail both show)."""
    import numpy as np
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([xx / w * 255, yy / h * 255, (np.sin(xx / 37.0) * np.cos(yy / 53.0) * 0.5 + 0.5) * 255], -1)
    im = Image.fromarray(rgb.astype(np.uint8))
    d = ImageDraw.Draw(im)
    for i in range(6):
        x0, y0 = (i * 0.15 + 0.05) * w, ((i * 37) % 100) / 100 * h * 0.7
        d.ellipse((x0, y0, x0 + w / 5, y0 + h / 4), outline=(255, 255, 255), width=6)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def methods(w, h, tile_px, tiled_vae="auto"):
    """name → the request's extra fields. Peers at their img2img defaults (the order of their positional args is
    their ``ui()`` return order)."""
    td_defaults = [False, True, w, h,  # overwrite size, keep input size, (unused) width/height
                   96, 96, 8, 4,  # latent tile width/height, overlap (img2img default), tile batch
                   "None", 2.0,  # upscaler (none: the init is already at the target), scale factor (unused)
                   False, 10, 1, 1, 64,  # noise inversion off
                   False, False, False, False]  # control tensor on CPU, region control off
    usdu = [None, 512, 0, 8, 32, 64, 0.35, 16,  # info, tile w/h (0 = as wide), mask blur, padding, seams fix w/denoise/padding
            0, False, 0, False, 4, 0,  # upscaler index 0 (None), save upscaled, redraw Linear, save seams, blur, seams fix None
            0, 2048, 2048, 2]  # target size from img2img settings
    return {
        "FSTD (ours)": {"alwayson_scripts": {ASD: {"args": [{"enabled": True, "width": w, "height": h, "tile": tile_px,
                                                               "offset_range": tile_px // 2, "mode": "implicit",
                                                               "tiled_vae": tiled_vae}]}}},
        "Tiled Diffusion MultiDiffusion": {"alwayson_scripts": {"Tiled Diffusion": {"args": [True, "MultiDiffusion", *td_defaults]}}},
        "Tiled Diffusion Mixture of Diffusers": {"alwayson_scripts": {"Tiled Diffusion": {"args": [True, "Mixture of Diffusers", *td_defaults]}}},
        "Ultimate SD Upscale": {"script_name": "ultimate sd upscale", "script_args": usdu},
        # Forge's built-in: enabled, method, tile width/height (px), overlap (px), tile batch
        "Forge MultiDiffusion Integrated": {"alwayson_scripts": {"MultiDiffusion Integrated": {"args": [True, "MultiDiffusion", 768, 768, 64, 4]}}},
        "Forge Mixture of Diffusers": {"alwayson_scripts": {"MultiDiffusion Integrated": {"args": [True, "Mixture of Diffusers", 768, 768, 64, 4]}}},
    }


def server_pid(url):
    """The PID listening on the URL's port (from /proc/net/tcp's socket inode), or None."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                for line in list(f)[1:]:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except OSError:
            pass
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def memory(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def available(http, w, h, tiled_vae):
    """The methods this WebUI can run (the extension's counter included), with the reason for the others."""
    scripts = http.get("/sdapi/v1/scripts").json()
    names = {s.lower() for s in scripts.get("img2img", [])}
    if http.get(DIAG).status_code != 200:
        sys.exit(f"{DIAG} is absent: start the WebUI with FREEDIFF_DIAGNOSTICS=1")
    out, missing = {}, {}
    for name, extra in methods(w, h, 512, tiled_vae).items():
        need = "ultimate sd upscale" if "script_name" in extra else next(iter(extra["alwayson_scripts"])).lower()
        if need in names:
            out[name] = extra
        else:
            missing[name] = f"no '{need}' script in this WebUI"
    return out, missing


def run_one(http, pid, payload):
    http.delete(DIAG)
    before = memory(pid) if pid else {}
    if pid:
        reset_peak(pid)
    t = time.perf_counter()
    r = http.post("/sdapi/v1/img2img", json=payload)
    wall = time.perf_counter() - t
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[-600:]}")
    work = http.get(DIAG).json()
    after = memory(pid) if pid else {}
    peak = after.get("VmHWM", 0) - before.get("VmRSS", 0) if pid else float("nan")
    return {"wall": wall, "calls": work["calls"], "cells": work["latent_cells"], "shapes": work["shapes"],
            "unet_s": work["unet_seconds"], "step_s": work["step_seconds"], "peak_mib": peak,
            "image": r.json()["images"][0]}


def sampled_steps(steps, denoise):
    """The WebUI's img2img samples the last int(denoise × steps) + 1 sigmas of the schedule: that many U-Net steps."""
    return int(min(denoise, 0.999) * steps) + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("FREEDIFF_WEBUI_URL", "http://127.0.0.1:7860"))
    ap.add_argument("--sizes", default="1024x1024,1000x600")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--denoise", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated method names to run (default: all available)")
    ap.add_argument("--out", default="", help="a folder for the output images (for a look at seams)")
    ap.add_argument("--checkpoint", default="", help="load this checkpoint (a title or part of one) first")
    ap.add_argument("--tiled-vae", default="auto", choices=["auto", "on", "off"], help="FSTD's tiled VAE setting")
    ap.add_argument("--project-steps", type=int, default=20, help="project the wall to this many steps (× denoise)")
    args = ap.parse_args()
    http = client(args.url.rstrip("/"))
    if args.checkpoint:
        http.post("/sdapi/v1/refresh-checkpoints")
        titles = [m["title"] for m in http.get("/sdapi/v1/sd-models").json() if args.checkpoint in m["title"]]
        if not titles:
            sys.exit(f"no checkpoint matching {args.checkpoint!r} in this WebUI")
        http.post("/sdapi/v1/options", json={"sd_model_checkpoint": titles[0]}).raise_for_status()
    pid = server_pid(args.url)
    info = http.get("/sdapi/v1/options").json()
    print(f"WebUI {args.url} (pid {pid}); checkpoint {info.get('sd_model_checkpoint')}; "
          f"img2img {args.steps} steps × denoise {args.denoise} (Euler, CFG 6), seed {args.seed}")
    results = {}
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        todo, missing = available(http, w, h, args.tiled_vae)
        if args.only:
            todo = {k: v for k, v in todo.items() if any(o.strip().lower() in k.lower() for o in args.only.split(","))}
        for name, why in missing.items():
            print(f"  {size}: {name} skipped: {why}")
        base = {"prompt": "a harbour town at dusk, detailed photo", "negative_prompt": "blurry", "steps": args.steps,
                "denoising_strength": args.denoise, "seed": args.seed, "sampler_name": "Euler", "cfg_scale": 6,
                "width": w, "height": h, "init_images": [init_image(w, h)], "save_images": False}
        names = list(todo)
        for rnd in range(args.rounds):
            for name in names[rnd % len(names):] + names[:rnd % len(names)]:  # rotate the order each round
                res = run_one(http, pid, {**base, **todo[name]})
                results.setdefault((size, name), []).append(res)
                print(f"  {size} {name}: {res['wall']:.1f} s ({res['step_s']:.1f} s in sampler steps, {res['unet_s']:.1f} s "
                      f"of it in the U-Net), {res['calls']} U-Net calls, peak +{res['peak_mib']:.0f} MiB", flush=True)
                if args.out:
                    os.makedirs(args.out, exist_ok=True)
                    with open(os.path.join(args.out, f"{size}-{name.replace(' ', '_')}.png"), "wb") as f:
                        f.write(base64.b64decode(res["image"]))
    sampled = sampled_steps(args.steps, args.denoise)
    projected = sampled_steps(args.project_steps, args.denoise)

    def wall_at(run, steps):
        return run["wall"] - run["step_s"] + run["step_s"] / sampled * steps

    print(f"\n{sampled} sampled steps measured; projected to {args.project_steps} steps × denoise {args.denoise} = "
          f"{projected} sampled steps")
    print(f"| output px | method | wall s | ÷ FSTD | steps s (U-Net s) | rest s | projected wall s | ÷ FSTD | U-Net calls "
          f"| U-Net work (untiled steps ÷ {sampled}) | peak RSS growth MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        area = -(-w // 8) * -(-h // 8) * 2  # CFG batch: cond + uncond in one call
        ours = results.get((size, "FSTD (ours)"))
        best_ours = min(ours, key=lambda r: r["wall"]) if ours else None
        for (s, name), runs in results.items():
            if s != size:
                continue
            best = min(runs, key=lambda r: r["wall"])
            ratio = f"{best['wall'] / best_ours['wall']:.2f}" if best_ours else "–"
            proj = wall_at(best, projected)
            proj_ratio = f"{proj / wall_at(best_ours, projected):.2f}" if best_ours else "–"
            work = runs[0]["cells"] / area / max(sampled, 1)
            print(f"| {size} | {name} | {best['wall']:.1f} | {ratio} | {best['step_s']:.1f} ({best['unet_s']:.1f}) | "
                  f"{best['wall'] - best['step_s']:.1f} | {proj:.0f} | {proj_ratio} | {runs[0]['calls']} | {work:.3f} | "
                  f"{max(r['peak_mib'] for r in runs):.0f} |")
    print("\nU-Net input shapes per method: [shape, calls, seconds]")
    for (s, name), runs in results.items():
        print(f"  {s} {name}: " + json.dumps([(x["shape"], x["calls"], x["seconds"]) for x in runs[0]["shapes"]]))


if __name__ == "__main__":
    main()
