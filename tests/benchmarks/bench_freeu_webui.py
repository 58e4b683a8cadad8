"""FreeU's added time per sampler step in a running WebUI (either host): txt2img with FreeU off and on, interleaved,
same seed and size, the step time read from the extension's opt-in counter (start the WebUI with
``FREEDIFF_DIAGNOSTICS=1``: sampler steps timed from the ``cfg_denoiser`` to the ``cfg_after_cfg`` callback, so the
VAE and conditioning are left out).

    FREEDIFF_WEBUI_URL=http://127.0.0.1:7870 python tests/benchmarks/bench_freeu_webui.py --size 512 --steps 6 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

DIAG = "/freediff/v1/diagnostics/unet"


def diagnostics_client(url: str):
    """An HTTP client of the WebUI at ``url`` and the host it says it is; exits when the extension's counter is off."""
    import httpx

    http = httpx.Client(base_url=url.rstrip("/"), timeout=7200)
    if http.get(DIAG).status_code != 200:
        sys.exit(f"{DIAG} is absent: start the WebUI with FREEDIFF_DIAGNOSTICS=1")
    return http, http.get("/freediff/v1/version").json().get("host")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("FREEDIFF_WEBUI_URL", "http://127.0.0.1:7860"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    http, host = diagnostics_client(args.url)
    base = {"prompt": "a harbour town at dusk, detailed photo", "steps": args.steps, "width": args.size, "height": args.size,
            "seed": 1234, "sampler_name": "Euler", "cfg_scale": 6, "save_images": False}
    runs = {"off": [], "on": []}
    http.post("/sdapi/v1/txt2img", json={**base, "steps": 1})  # warm-up: model load, first-call costs
    for rnd in range(args.rounds):
        for name in (("off", "on") if rnd % 2 == 0 else ("on", "off")):
            http.delete(DIAG)
            r = http.post("/sdapi/v1/txt2img", json={**base, "alwayson_scripts": {"FreeU": {"args": [{"enabled": name == "on"}]}}})
            r.raise_for_status()
            runs[name].append(http.get(DIAG).json()["step_seconds"] / args.steps)
            print(f"  round {rnd + 1} FreeU {name}: {runs[name][-1]:.3f} s a step", flush=True)
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    print(f"{host} {args.url}: {args.size}² txt2img, {args.steps} Euler steps, median of {args.rounds} rounds")
    print(f"| FreeU off s/step | FreeU on s/step | added |\n|---|---|---|\n| {off:.3f} | {on:.3f} | {100 * (on / off - 1):+.1f} % |")


if __name__ == "__main__":
    main()
