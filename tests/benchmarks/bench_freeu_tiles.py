"""FreeU inside Any-Size Diffusion's tiled pass: the seam metric of ``tests/asd/test_fstd.py::test_seams_on_real_unet``
(gradient energy across the 16-px tile grid's borders ÷ elsewhere, a smooth 48² latent denoised from sigma 3 over 10
Euler steps) with FreeU off, FreeU on each tile's own statistics (FreeU before ``TileStats``), and FreeU on the whole
latent's statistics (``lib_freediff.freeu.tiled.TileStats``, as the WebUI glue wires it), side by side, per tiling mode.

U-Nets (random weights, CPU, one thread):
  ldm        the seam test's ldm U-Net (2 levels: FreeU's stage 2 on its 3 deepest output blocks)
  ldm4       the SD1.5 topology at 32 channels (4 levels: both FreeU stages), slower
  pointwise  ldm's block layout of 1×1 layers (tiny_sd.PointwiseStagesUNet): tiled equals untiled exactly, so
             whatever seams FreeU leaves come from FreeU's statistics alone

A script, not a test. Prints one markdown table per U-Net: the mean ratio over the seeds and, in brackets, the mean
paired difference to FreeU off ± its standard error.

``--hooks``: instead, the time of FreeU's ten stage operations of SD1.5 on one tiled U-Net call (64² latent tiles,
cond + uncond rows), plain (each tile's own statistics) against ``TileStats`` (gathering, and applying the previous
step's), median of ``--repeats``.

Usage: python tests/benchmarks/bench_freeu_tiles.py [--unets ldm,pointwise] [--modes implicit,explicit,none] [--seeds 8]
       python tests/benchmarks/bench_freeu_tiles.py --hooks [--tiles 1,4] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", ".."), os.path.join(HERE, "..", "webui_stub"), os.path.join(HERE, "..")]

import torch  # noqa: E402

from lib_freediff.asd.fstd import TiledDenoiser  # noqa: E402
from lib_freediff.freeu.tiled import TileStats  # noqa: E402
from lib_freediff.freeu.unet import FreeUFactors, FreeUPatch  # noqa: E402
from seams import border_ratio, smooth_run  # noqa: E402

T, L = 16, 48
FACTORS = FreeUFactors(version=2, b1=1.5, b2=1.6, s1=0.9, s2=0.2)  # SD1.5's official values
MODES = {"implicit": dict(mode="implicit", offset_range=T // 2), "explicit": dict(mode="explicit", overlap=T // 2),
         "none": dict(mode="none")}
VARIANTS = ("off", "per tile", "whole latent")


def build(name):
    import k_diffusion as K
    from modules import sd_hijack_unet

    from asd.conftest import make_unet
    from tiny_sd import PointwiseStagesUNet, UNetAsLDM, tiny_unet

    sd_hijack_unet.apply()  # tiles of any size, as in the WebUI
    unet = {"ldm": make_unet, "ldm4": lambda: tiny_unet("sd1", context_dim=32),
            "pointwise": lambda: PointwiseStagesUNet(context_dim=32)}[name]()
    return unet, K.external.CompVisDenoiser(UNetAsLDM(unet))


def ratio(unet, den, variant, seed, mode):
    stats = TileStats() if variant == "whole latent" else None
    patch = FreeUPatch(unet, FACTORS, tiles=stats)
    if variant != "off":
        patch.attach()
    try:
        if mode == "untiled":
            return border_ratio(smooth_run(den, seed, L), T)
        tiler = TiledDenoiser(den, tile=T, seed=seed, **MODES[mode])
        if stats is not None:
            tiler.tile_hooks.append(stats)
        return border_ratio(smooth_run(tiler, seed, L), T)
    finally:
        patch.remove()


def cell(values, off):
    diffs = [v - o for v, o in zip(values, off)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ({statistics.mean(diffs):+.3f} ± {se:.3f})"


# SD1.5's FreeU stages on a 64² latent tile: (backbone channels, skip channels, side, stage)
SD15_STAGES = [(1280, 1280, 8, 1)] * 3 + [(1280, 1280, 16, 1)] * 2 + [(1280, 640, 16, 1), (1280, 640, 32, 1),
                                                                       (640, 640, 32, 2), (640, 320, 32, 2), (640, 320, 64, 2)]


def time_hooks(tiles, device, repeats):
    from lib_freediff.asd.fstd import TileCall
    from lib_freediff.asd.tiles import TileBox
    from lib_freediff.freeu.unet import apply_stage

    boxes = tuple(TileBox(64 * i, 0, 64 * i + 64, 64) for i in range(tiles))
    feats = [(torch.randn(2 * tiles, cb, side, side, device=device), torch.randn(2 * tiles, cs, side, side, device=device), stage)
             for cb, cs, side, stage in SD15_STAGES]

    def run(stats, step):
        def ops():
            for i, (h, hsp, stage) in enumerate(feats):
                apply_stage(h.clone(), hsp, FACTORS, stage, stats, i)
            if device != "cpu":
                torch.cuda.synchronize()
        t = time.perf_counter()
        if stats is None:
            ops()
        else:
            with stats(TileCall(step, 0, (2, 4, 64, 64 * tiles), boxes, 2, 64, 64 * tiles)):
                ops()
        return time.perf_counter() - t

    times = {"plain": [], "first step (gathers)": [], "later steps (gathers, applies)": []}
    for _ in range(repeats):
        stats = TileStats()
        times["plain"].append(run(None, 0))
        times["first step (gathers)"].append(run(stats, 0))
        times["later steps (gathers, applies)"].append(run(stats, 1))
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--unets", default="ldm,pointwise")
    ap.add_argument("--modes", default="implicit,explicit,none")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--hooks", action="store_true")
    ap.add_argument("--tiles", default="1,4")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.hooks:
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{args.device}, fp32, 1 thread, median of {args.repeats}\n")
        print("| tiles a call | FreeU ops, plain | with TileStats, first step | with TileStats, later steps |\n|---|---|---|---|")
        for tiles in map(int, args.tiles.split(",")):
            ms = time_hooks(tiles, args.device, args.repeats)
            print(f"| {tiles} | " + " | ".join(f"{v:.1f} ms" for v in ms.values()) + " |", flush=True)
        return
    seeds = range(1, args.seeds + 1)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"FreeU v2 b1 1.5 b2 1.6 s1 0.9 s2 0.2, tile {T}, latent {L}², seeds {seeds.start}..{seeds.stop - 1}")
    for name in args.unets.split(","):
        unet, den = build(name)
        t0 = time.perf_counter()
        print(f"\n{name}: border ratio, mean over {len(seeds)} seeds (paired difference to FreeU off ± s.e.)\n")
        print("| tiling | " + " | ".join(f"FreeU {v}" for v in VARIANTS) + " |")
        print("|---" * (len(VARIANTS) + 1) + "|")
        for mode in ["untiled", *args.modes.split(",")]:
            variants = VARIANTS[:2] if mode == "untiled" else VARIANTS  # untiled, TileStats changes nothing
            got = {v: [ratio(unet, den, v, seed, mode) for seed in seeds] for v in variants}
            row = [f"{statistics.mean(got['off']):.3f}"] + [cell(got[v], got["off"]) for v in variants[1:]]
            print(f"| {mode} | " + " | ".join(row + ["="] * (len(VARIANTS) - len(row))) + " |", flush=True)
        print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
