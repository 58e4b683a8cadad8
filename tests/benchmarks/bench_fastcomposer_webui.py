"""FastComposer in a running WebUI (either host), with the FastComposer checkpoint and model there and the extension's
opt-in counter on (start the WebUI with ``FREEDIFF_DIAGNOSTICS=1``):

* ``--what step``: FastComposer's added time per sampler step at ``--size``² txt2img — the prompt without markers and
  without FastComposer against the marked prompt with it (same seed, interleaved rounds, after a warm-up that loads its
  image encoder and encodes the subjects once). Per run: the sampler steps' time (``cfg_denoiser`` → ``cfg_after_cfg``,
  VAE and conditioning left out), FastComposer's own ``cfg_denoiser`` callback (the delayed switch, and the fuse from the
  switch step on), and the request's wall.
* ``--what three``: FastComposer + FreeU + Any-Size Diffusion against FreeU + Any-Size Diffusion alone, to
  ``--target`` (e.g. 1000x600): the U-Net calls and the latent cells they evaluated (counted), the step time and the
  wall.

    FREEDIFF_WEBUI_URL=http://127.0.0.1:7870 python tests/benchmarks/bench_fastcomposer_webui.py --what step --size 512 --steps 4
    FREEDIFF_WEBUI_URL=http://127.0.0.1:7870 python tests/benchmarks/bench_fastcomposer_webui.py --what three --target 1000x600
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import time

from bench_freeu_webui import DIAG, diagnostics_client

FC, FREEU, ASD = "FastComposer", "FreeU", "Any-Size Diffusion"
PROMPT, CLEAN = "a man img and a woman img at the beach, photo", "a man and a woman at the beach, photo"


def subject_images() -> list:
    """Two small deterministic portraits-to-be (random weights: any picture does), as base64 PNG."""
    import numpy as np
    from PIL import Image

    out = []
    for seed in (11, 12):
        rng = np.random.default_rng(seed)
        arr = (rng.random((160, 128, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def machine() -> str:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu or 'unknown CPU'}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at the end"


def fastcomposer_checkpoint(http) -> str:
    found = [m["title"] for m in http.get("/sdapi/v1/sd-models").json() if m["title"].lower().startswith("fastcomposer")]
    if not found:
        sys.exit("no converted FastComposer checkpoint among this WebUI's checkpoints")
    return found[0]


def run(http, payload) -> dict:
    http.delete(DIAG)
    started = time.perf_counter()
    r = http.post("/sdapi/v1/txt2img", json=payload)
    wall = time.perf_counter() - started
    if r.status_code != 200:
        sys.exit(f"HTTP {r.status_code}: {r.text[-600:]}")
    from PIL import Image

    size = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size
    return {"wall": wall, "report": http.get(DIAG).json(), "info": r.json()["info"], "size": size}


def step_cost(http, args, base, images) -> None:
    on = {**base, "prompt": PROMPT, "alwayson_scripts": {FC: {"args": [{"enabled": True, "images": images, "alpha": args.alpha}]}}}
    off = {**base, "prompt": CLEAN}
    cold = run(http, {**on, "steps": 1})  # loads the image encoder, encodes the subjects (cached by content afterwards)
    print(f"  warm-up with FastComposer (model load + subject encoding + 1 step): {cold['wall']:.1f} s wall", flush=True)
    rows = {"off": [], "on": []}
    for rnd in range(args.rounds):
        for name in (("off", "on") if rnd % 2 == 0 else ("on", "off")):
            res = run(http, on if name == "on" else off)
            report = res["report"]
            callback = report["callbacks"].get(FC, {"calls": 0, "seconds": 0.0})
            rows[name].append((report["step_seconds"] / args.steps, report["unet_seconds"] / args.steps,
                               callback["seconds"] / args.steps, res["wall"]))
            print(f"  round {rnd + 1} {name}: {rows[name][-1][0]:.3f} s/step ({rows[name][-1][1]:.3f} in the U-Net), "
                  f"FastComposer callback {1000 * rows[name][-1][2]:.3f} ms/step ({callback['calls']} calls), "
                  f"wall {res['wall']:.1f} s", flush=True)
    med = {k: [statistics.median(col) for col in zip(*v)] for k, v in rows.items()}
    print(f"\n{args.size}² txt2img, {args.steps} Euler steps, α {args.alpha}, 2 subjects, median of {args.rounds} round(s)")
    print("| | s/step | U-Net s/step | FastComposer callback ms/step | wall s |\n|---|---|---|---|---|")
    for name in ("off", "on"):
        print(f"| {name} | {med[name][0]:.3f} | {med[name][1]:.3f} | {1000 * med[name][2]:.3f} | {med[name][3]:.1f} |")
    print(f"added: {100 * (med['on'][0] / med['off'][0] - 1):+.1f} % step time (noise of the machine included), "
          f"callback {100 * med['on'][2] / med['off'][0]:.3f} % of a step; cold start {cold['wall']:.1f} s once")


def three_together(http, args, base, images) -> None:
    width, height = (int(v) for v in args.target.lower().split("x"))
    asd = {"enabled": True, "width": width, "height": height, "steps": args.hires_steps, "denoise": args.denoise}
    freeu_asd = {FREEU: {"args": [{"enabled": True}]}, ASD: {"args": [asd]}}
    three = {**freeu_asd, FC: {"args": [{"enabled": True, "images": images, "alpha": args.alpha}]}}
    run(http, {**base, "prompt": PROMPT, "steps": 1, "width": 256, "height": 256,
               "alwayson_scripts": {FC: {"args": [{"enabled": True, "images": images}]}}})  # warm-up: encoder, subjects
    results = {}
    for name, payload in (("FreeU + ASD", {**base, "prompt": CLEAN, "alwayson_scripts": freeu_asd}),
                          ("FastComposer + FreeU + ASD", {**base, "prompt": PROMPT, "alwayson_scripts": three})):
        results[name] = run(http, payload)
        r = results[name]["report"]
        print(f"  {name}: {r['calls']} U-Net calls, {r['latent_cells']} latent cells, steps {r['step_seconds']:.1f} s, "
              f"wall {results[name]['wall']:.1f} s, image {results[name]['size']}", flush=True)
    print(f"\n{width}×{height} txt2img, {args.steps} first-pass + {args.hires_steps} hires Euler steps, denoise {args.denoise}")
    print("| | U-Net calls | latent cells | step s | wall s |\n|---|---|---|---|---|")
    for name, res in results.items():
        r = res["report"]
        print(f"| {name} | {r['calls']} | {r['latent_cells']} | {r['step_seconds']:.1f} | {res['wall']:.1f} |")
    print("infotext:", json.loads(results["FastComposer + FreeU + ASD"]["info"])["infotexts"][0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("FREEDIFF_WEBUI_URL", "http://127.0.0.1:7860"))
    ap.add_argument("--what", choices=("step", "three"), default="step")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--target", default="1000x600")
    ap.add_argument("--hires-steps", type=int, default=2)
    ap.add_argument("--denoise", type=float, default=0.5)
    args = ap.parse_args()
    http, host = diagnostics_client(args.url)
    base = {"negative_prompt": "blurry", "steps": args.steps, "width": args.size, "height": args.size, "seed": 1234,
            "sampler_name": "Euler", "cfg_scale": 6, "save_images": False,
            # kept loaded between the requests (restoring it would reload the checkpoint in every request's wall)
            "override_settings": {"sd_model_checkpoint": fastcomposer_checkpoint(http)},
            "override_settings_restore_afterwards": False}
    print(f"{host} at {args.url}")
    (step_cost if args.what == "step" else three_together)(http, args, base, subject_images())
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
