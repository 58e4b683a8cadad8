#!/usr/bin/env python
"""GPU check: half-precision correctness against float32, then speed and memory at real sizes, in one run.

    bash tests/gpu/check.sh [--dry-run] [--out FILE] [--budget SECONDS] [--sections LIST]

(check.sh finds or builds the Python environment, then runs this file with the same arguments.)

Correctness: every check computes the same thing from the same inputs and weights in float32 and in half precision
on the same device, and fails on NaN/Inf or when ‖half − fp32‖ / ‖fp32‖ exceeds k·u, u being the half type's unit
roundoff (2⁻¹¹ for fp16, 2⁻⁸ for bf16) and k stated per check. Half precision runs as the WebUI runs it: half
weights on a GPU under autocast, attention through scaled_dot_product_attention (the WebUI's "sdp").
Speed (fp16): random-weight SD1.5 and SDXL U-Nets and the SD VAE at full size: FreeU's added time per step, FSTD's
time per step against an untiled step at 1024² and 2048² for tile batch 1/2/4/8, tiled VAE against untiled at
2048², and the peak memory of each.
``--dry-run``: the same code at tiny sizes on the CPU, float32 against bfloat16, so that CI keeps it working.

A time guard keeps the run inside ``--budget`` seconds: a section (or benchmark row) that would not fit is skipped
with the reason. The table is rewritten after every row, so it holds whatever ran even if the run is killed.
Exit status: 0 when every check that ran passed, 1 when one failed, 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (HERE, os.path.join(ROOT, "tests", "benchmarks"), os.path.join(ROOT, "tests", "webui_stub"),
             os.path.join(ROOT, "tests"), ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)
# the WebUI stand-in keeps its data folder (models/fastcomposer) here; set before anything imports it
os.environ.setdefault("FREEDIFF_STUB_DATA", tempfile.mkdtemp(prefix="freediff-gpu-check-"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

from common import Budget, Models, Profile, Report, Run, UNetSpec  # noqa: E402

SECTIONS = ("freeu", "fstd", "vae", "fastcomposer", "webui", "speed_freeu", "speed_fstd", "speed_vae")


def gpu_profile(device: str) -> Profile:
    from tiny_sd import sd15_unet, sdxl_unet

    return Profile(
        dry_run=False, device=device, half_dtypes=(torch.float16, torch.bfloat16), speed_dtype=torch.float16,
        unets=(UNetSpec("SD1.5", sd15_unet, 768, 0, (tuple(range(7)), (7, 8, 9)), "SD1.5"),
               UNetSpec("SDXL", sdxl_unet, 2048, 2816, (tuple(range(4)), (4, 5, 6)), "SDXL")),
        vae_config=dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2),
        check_latent=64, check_batch=2, fstd_check_latent=128, tile=64, offset_range=32, vae_check_latent=64,
        vae_check_tile=32,        fastcomposer_full=True, webui_full=True,
        freeu_bench_latents={"SD1.5": 64, "SDXL": 128}, freeu_repeats=(20, 5),
        fstd_sides=(1024, 2048), tile_batches=(1, 2, 4, 8), fstd_steady_steps=3, vae_side=2048,
        estimates=dict(freeu=40, fstd=30, vae=20, fastcomposer=20, webui=60, speed_freeu=40, speed_fstd=150,
                       speed_vae=40))


def dry_profile() -> Profile:
    from tiny_sd import sd15_unet_full_blocks, sdxl_unet_full_blocks

    # the tests' FastComposer release is 32 wide: the SD1.5 stand-in takes that context width
    return Profile(
        dry_run=True, device="cpu", half_dtypes=(torch.bfloat16,), speed_dtype=torch.bfloat16,
        unets=(UNetSpec("SD1.5", lambda: sd15_unet_full_blocks(context_dim=32), 32, 0, (tuple(range(7)), (7, 8, 9)), "SD1.5"),
               UNetSpec("SDXL", lambda: sdxl_unet_full_blocks(context_dim=64, adm_in_channels=48), 64, 48,
                        (tuple(range(4)), (4, 5, 6)), "SDXL")),
        vae_config={}, check_latent=16, check_batch=1, fstd_check_latent=24, tile=16, offset_range=8, vae_check_latent=24,
        vae_check_tile=16, fastcomposer_full=False, webui_full=False,
        freeu_bench_latents={"SD1.5": 16, "SDXL": 16}, freeu_repeats=(2, 1),
        fstd_sides=(192, 256), tile_batches=(1, 2, 4, 8), fstd_steady_steps=1, vae_side=192,
        estimates={name: 5 for name in SECTIONS})


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def machine_lines(profile: Profile, budget_s: float) -> List[str]:
    from bench_asd import machine_name

    cpu = machine_name("cpu")
    lines = []
    if profile.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        lines.append(f"- device: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
                     f"{props.major}.{props.minor}, CUDA {torch.version.cuda}; host {cpu}, {os.cpu_count()} CPUs")
    else:
        lines.append(f"- device: CPU only ({cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads)")
    lines.append(f"- torch {torch.__version__}, Python {platform.python_version()}; "
                 f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; time budget {budget_s:.0f} s")
    if profile.dry_run:
        lines.append("- **dry run**: tiny random-weight models (real block layouts) at tiny sizes; float32 against "
                     "bfloat16; speed rows only show that the code runs (CPU times, no VRAM)")
    else:
        lines.append("- random-weight models at full size: SD1.5 U-Net (860 M parameters), SDXL base U-Net (2.57 G; "
                     "ldm's UNetModel with sgm's per-level transformer depths 0/2/10), SD VAE; speed in fp16, batch 2 "
                     "(cond + uncond)")
    lines.append("- half precision as the WebUI runs it: half weights under autocast (CPU: float32 weights under "
                 "autocast), attention through scaled_dot_product_attention (the WebUI's sdp); float32 references "
                 "without TF32")
    lines.append("- bound k·u: u = unit roundoff, 2⁻¹¹ = 4.9e-4 (fp16), 2⁻⁸ = 3.9e-3 (bf16); rel err = "
                 "‖half − fp32‖ / ‖fp32‖; NaN/Inf fails")
    return lines


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, float32 against bfloat16")
    ap.add_argument("--out", default=None, help="markdown table (default tests/artifacts/gpu_check[_dry_run].md)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run (default 420; dry run 900, for a busy CI machine)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of: " + ", ".join(SECTIONS))
    ap.add_argument("--device", default=None, help="default cuda (dry run: cpu)")
    ap.add_argument("--corrupt", action="append", default=[], metavar="CHECK=nan|scale",
                    help="spoil one check's half-precision output (shows that the check fails)")
    args = ap.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    corrupt = {}
    for item in args.corrupt:
        check_id, _, how = item.partition("=")
        if how not in ("nan", "scale"):
            ap.error(f"--corrupt {item}: expected CHECK=nan or CHECK=scale")
        corrupt[check_id] = how
    args.corrupt = corrupt
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ("cpu" if args.dry_run else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"CUDA is not available to torch {torch.__version__} (built for CUDA {torch.version.cuda}); "
              "run with --dry-run on a machine without a GPU", file=sys.stderr)
        return 2
    profile = dry_profile() if args.dry_run else gpu_profile(device)
    if device.startswith("cuda"):
        # float32 references in full float32: TF32 convolutions alone would differ from fp32 by about 1e-3
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(1)  # tiny models: as steady and, on 2 cores, as fast as more threads (tests/conftest.py)
    budget_s = args.budget if args.budget is not None else (900.0 if args.dry_run else 420.0)
    out = args.out or os.path.join(ROOT, "tests", "artifacts", "gpu_check_dry_run.md" if args.dry_run else "gpu_check.md")
    title = "# GPU check" + (" (dry run)" if args.dry_run else "")
    report = Report(out, [title] + machine_lines(profile, budget_s), args.corrupt)
    run = Run(profile, report, Budget(budget_s), Models(profile), tuple(args.sections.split(",")))

    import precision_checks
    import speed
    import webui_paths
    from modules import sd_hijack_unet
    from modules.sd_hijack_optimizations import sdp_attention

    sd_hijack_unet.apply()  # the WebUI's U-Net takes latents (and tiles) of any size
    with sdp_attention():
        run.section("freeu", "FreeU", precision_checks.freeu)
        run.section("fstd", "FSTD tiling", precision_checks.fstd)
        run.section("vae", "tiled VAE", precision_checks.tiled_vae)
        run.section("fastcomposer", "FastComposer", precision_checks.fastcomposer)
        run.section("webui", "WebUI stand-in", webui_paths.generations)
        run.models.keep_only(profile.speed_dtype)
        run.section("speed_freeu", "FreeU speed", speed.freeu)
        run.section("speed_fstd", "FSTD speed", speed.fstd)
        run.section("speed_vae", "tiled VAE speed", speed.tiled_vae)
    if report.corrupt:
        report.add("check", "--corrupt", None, f"no check named {', '.join(report.corrupt)} ran", "", "FAIL: unknown check")
    failed, skipped = report.failed, report.skipped
    checks = [r for r in report.rows if r.result == "ok" or r.result.startswith("FAIL")]
    verdict = "FAIL" if failed else "PASS"
    took = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in run.section_seconds.items())
    report.footer = [f"Section times: {took}.", "",
                     f"**{verdict}**: {len(checks) - len(failed)} of {len(checks)} checks passed, {len(skipped)} skipped; "
                     f"{run.budget.elapsed():.0f} s of {budget_s:.0f} s."]
    report.write()
    print("\n" + open(out, encoding="utf-8").read())
    print(f"table written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
