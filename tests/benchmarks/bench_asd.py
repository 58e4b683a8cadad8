"""Benchmark of ASD stage II tiling: per-step time and peak memory of FSTD (implicit overlap) vs a fixed
non-overlapping grid vs explicit overlap (overlap = tile/2) vs the untiled model, at several output sizes.

``--work``: the U-Net work of each mode counted exactly (U-Net input area per step ÷ latent area, by a forward
pre-hook on a tiny real U-Net) over the size set 301×173 … 3840×2160, first step and steady steps apart (the peers
users pick instead are counted in a live WebUI: bench_asd_webui.py).
``--memory``: peak RSS of one FSTD step of an 8192² second pass against one untiled 1024² step (the "mid" U-Net
on the CPU, ``--unet`` to choose).

A script, not a pytest test. CPU default: a mid-size random ldm UNet, batch 1, one thread (~3 min).
GPU: ``--device cuda --unet sd15 --dtype float16 --batch 2 --sizes 1024,1536,2048,3072``.
Modes are timed interleaved, step by step, so a busy shared machine slows them alike. Step 0 is timed
apart from the steady-state steps 1..N: FSTD's first step has no previous prediction to carry, so its
shifted grid gets extra tiles once (reported in its own column). Peak memory is that of one step above what was allocated
before it: CUDA via torch.cuda.max_memory_allocated; CPU via the peak RSS growth
(/proc/self/status VmHWM after /proc/self/clear_refs) in a forked child of the clean parent.

Usage: python tests/benchmarks/bench_asd.py [--device cpu|cuda] [--sizes 1024,1280,1536] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "webui_stub")))

import torch  # noqa: E402

from lib_freediff.asd.fstd import TiledDenoiser  # noqa: E402
from tiny_sd import UNetAsLDM  # noqa: E402

UNETS = {
    "mid": dict(model_channels=64, channel_mult=(1, 2, 4), num_res_blocks=1, attention_resolutions=[2, 4],
                num_head_channels=32, context_dim=64),
    "sd15": dict(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_resolutions=[4, 2, 1],
                 num_heads=8, context_dim=768),
}


def any_size_unet():
    """As in the WebUI: the U-Net takes latents (and tiles) of any size (its `cat` hijack)."""
    from modules import sd_hijack_unet

    sd_hijack_unet.apply()


def build(args):
    from k_diffusion.external import CompVisDenoiser
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    any_size_unet()
    torch.manual_seed(0)
    cfg = UNETS[args.unet]
    unet = UNetModel(image_size=64, in_channels=4, out_channels=4, transformer_depth=1,
                     use_spatial_transformer=True, legacy=False, **cfg)
    dtype = getattr(torch, args.dtype)
    unet = unet.to(args.device, dtype).eval()
    unet.dtype = dtype
    den = CompVisDenoiser(UNetAsLDM(unet).to(args.device))
    with torch.no_grad(), torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
        # one-time backend set-up and kernel selection at the tile shape, so no measured mode pays it
        for b in {1, args.tile_batch}:
            den(torch.randn(b * args.batch, 4, args.tile, args.tile, device=args.device),
                torch.ones(b * args.batch, device=args.device),
                cond={"c_crossattn": [torch.randn(b * args.batch, 77, cfg["context_dim"], device=args.device)]})
    return den, cfg["context_dim"], dtype


def _rss_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def _setup(den, ctx_dim, args, side, mode):
    dev = torch.device(args.device)
    lat = side // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 4, lat, lat, generator=g).to(dev)
    cond = {"c_crossattn": [torch.randn(args.batch, 77, ctx_dim, generator=g).to(dev)]}
    sigma = torch.full((args.batch,), 2.0, device=dev)
    if mode == "untiled":
        return den, x, sigma, cond
    name, _, per_call = mode.partition("@")  # "fstd@4": FSTD with 4 tiles a U-Net call
    kw = dict(mode="implicit" if name == "fstd" else name, tile=args.tile, overlap=args.tile // 2,
              offset_range=args.offset_range, tile_batch=int(per_call or args.tile_batch), seed=0)
    model = TiledDenoiser(den, **kw)
    model.history = []
    return model, x, sigma, cond


def _sync(args):
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory(den, ctx_dim, dtype, args, side, mode, steps=1):
    """Peak memory (MiB) of a step above what was allocated before it (run in a fresh fork on CPU); with ``steps``
    > 1 a list, one value a step (FSTD's step 0 covers the latent with overlapping tiles, later steps do not)."""
    model, x, sigma, cond = _setup(den, ctx_dim, args, side, mode)
    cuda = args.device.startswith("cuda")
    peaks = []
    with torch.no_grad(), torch.autocast("cuda" if cuda else "cpu", dtype=dtype, enabled=cuda and dtype != torch.float32):
        for i in range(steps):
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            elif not _rss_reset():
                return float("nan")
            else:
                base = _status_kb("VmRSS:") * 1024
            if mode != "untiled":
                model.set_step(i)
            model(x, sigma, cond=cond)
            _sync(args)
            peak = torch.cuda.max_memory_allocated() - base if cuda else _status_kb("VmHWM:") * 1024 - base
            peaks.append(peak / 2**20)
    return peaks[0] if steps == 1 else peaks


def in_fork(fn, *a):
    """``fn(*a)`` in a forked child (its own peak RSS, the parent's heap untouched); returns its float or list of
    floats (nan when it failed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            val = fn(*a)
            val = [float(v) for v in val] if isinstance(val, list) else float(val)
        except BaseException:
            val = float("nan")
        os.write(w, json.dumps(val).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data) if data else float("nan")


def step_times(den, ctx_dim, dtype, args, side, modes):
    """Per mode: mean seconds per sampler step and mean tile count; modes interleaved step by step
    (rotating order) so that a busy shared machine slows them alike. Tile-shaped calls were warmed up
    at start; the untiled model gets no warm-up at its shape (a slight bias against it)."""
    setups = {m: _setup(den, ctx_dim, args, side, m) for m in modes}
    cuda = args.device.startswith("cuda")
    res = {m: [] for m in modes}
    first = {}
    with torch.no_grad(), torch.autocast("cuda" if cuda else "cpu", dtype=dtype, enabled=cuda and dtype != torch.float32):
        for i in range(args.steps + 1):
            for j in range(len(modes)):
                mode = modes[(i + j) % len(modes)]
                model, x, sigma, cond = setups[mode]
                if mode != "untiled":
                    model.set_step(i)
                _sync(args)
                t0 = time.perf_counter()
                model(x, sigma, cond=cond)
                _sync(args)
                if i == 0:
                    first[mode] = time.perf_counter() - t0
                else:
                    res[mode].append(time.perf_counter() - t0)
    out = {}
    for m in modes:
        hist = getattr(setups[m][0], "history", None)
        steady = [c for c in hist if c.step > 0] if hist else None
        out[m] = {"s_per_step": sum(res[m]) / len(res[m]), "first_step": first[m],
                  "first_tiles": len(hist[0].boxes) if hist else 1,
                  "tiles": sum(len(c.boxes) for c in steady) / len(steady) if steady else 1,
                  "calls": sum(c.inner_calls for c in steady) / len(steady) if steady else 1}
    return out


WORK_SIZES = [(301, 173), (1000, 600), (1024, 1024), (1920, 1080), (2048, 2048), (3840, 2160)]


def count_work(args):
    """U-Net input area per step ÷ latent area for each mode and size (first step and steady steps)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    any_size_unet()
    torch.manual_seed(0)
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[],
                     num_res_blocks=1, channel_mult=(1, 2), num_head_channels=16, legacy=False).eval()
    from k_diffusion.external import CompVisDenoiser

    den = CompVisDenoiser(UNetAsLDM(unet))
    area = []
    unet.register_forward_pre_hook(lambda m, a: area.append(a[0].shape[0] * a[0].shape[-2] * a[0].shape[-1]))
    modes = {"FSTD": dict(mode="implicit", offset_range=args.offset_range),
             "no overlap": dict(mode="none"), "explicit (overlap T/2)": dict(mode="explicit", overlap=args.tile // 2)}
    rows = []
    for w_px, h_px in WORK_SIZES:
        w, h = -(-w_px // 8), -(-h_px // 8)
        x = torch.zeros(1, 4, h, w)
        row = {"size": f"{w_px}×{h_px}", "latent": f"{w}×{h}"}
        for name, kw in modes.items():
            d = TiledDenoiser(den, tile=args.tile, tile_batch=8, seed=0, **kw)
            per_step = []
            with torch.no_grad():
                for i in range(args.work_steps):
                    area.clear()
                    d.set_step(i)
                    d(x, torch.ones(1), cond=torch.zeros(1, 1, 8))  # no attention: the context is unused
                    per_step.append(sum(area) / (w * h))
            row[name] = (per_step[0], max(per_step[1:]), sum(per_step[1:]) / len(per_step[1:]))
        rows.append(row)
    print(f"\nU-Net work per step ÷ latent area (tile {args.tile} latent px, offset range {args.offset_range}; "
          f"{args.work_steps} steps: first step, then the most and the mean of the others)\n")
    names = list(modes)
    print("| output px | latent | " + " | ".join(f"{n}: first / steady max / steady mean" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for r in rows:
        print(f"| {r['size']} | {r['latent']} | " + " | ".join("%.3f / %.3f / %.3f" % r[n] for n in names) + " |")


def memory_8192(args):
    """Peak RSS growth of one FSTD step at 8192² and of one untiled step at 1024² (``args.unet``), in forks."""
    den, ctx_dim, dtype = build(args)
    fstd = in_fork(peak_memory, den, ctx_dim, dtype, args, 8192, "fstd", 2)
    first, steady = fstd if isinstance(fstd, list) else (fstd, fstd)
    small = in_fork(peak_memory, den, ctx_dim, dtype, args, 1024, "untiled")
    lat = 8192 // 8
    buffers = args.batch * 4 * lat * lat * 4 / 2**20
    print(f"\nPeak RSS growth of one step, {args.unet} U-Net (MiB): FSTD 8192² step 0 {first:.0f}, steady step "
          f"{steady:.0f}; untiled 1024² {small:.0f}; one 8192² latent buffer (batch {args.batch}, fp32) {buffers:.0f}\n")


def machine_name(device="cpu"):
    if device == "cuda":
        dev = torch.cuda.get_device_name(0)
    else:
        dev = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                dev = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return dev


def machine(args):
    dev = machine_name(args.device)
    return (f"{dev}; torch {torch.__version__}; threads {torch.get_num_threads()} of {os.cpu_count()} CPUs; "
            f"unet {args.unet} ({args.dtype}); batch {args.batch}; tile {args.tile} latent px; "
            f"offset range {args.offset_range}; tile batch {args.tile_batch}; {args.steps} timed steps after step 0")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="1024,1280,1536", help="output sides in px (square), comma-separated")
    ap.add_argument("--unet", choices=list(UNETS), default=None, help="mid (CPU default) or sd15 (CUDA default)")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tile", type=int, default=64, help="latent px")
    ap.add_argument("--offset-range", type=int, default=32)
    ap.add_argument("--tile-batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per mode")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default="untiled,none,fstd,explicit",
                    help="comma-separated; fstd@N = FSTD with N tiles a U-Net call (e.g. fstd@1,fstd@4)")
    ap.add_argument("--work", action="store_true", help="count U-Net work over the size set (no timing)")
    ap.add_argument("--work-steps", type=int, default=6)
    ap.add_argument("--memory", action="store_true", help="peak RSS of an 8192² FSTD step vs an untiled 1024² step")
    args = ap.parse_args()
    if args.work:
        torch.set_num_threads(args.threads)
        print(f"Machine: {machine_name()}")
        return count_work(args)
    args.unet = args.unet or ("sd15" if args.device == "cuda" else "mid")
    args.dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA is not available")
    if args.memory:
        print(f"\nMachine: {machine(args)}")
        return memory_8192(args)
    den, ctx_dim, dtype = build(args)
    modes = args.modes.split(",")
    t_start = time.time()
    sizes = [int(v) for v in args.sizes.split(",")]
    mem = {}
    for side in sizes:  # memory first, each in a fork of the still clean parent (CUDA: in process)
        for m in modes:
            fn = (lambda *a: peak_memory(*a)) if args.device.startswith("cuda") else (lambda *a: in_fork(peak_memory, *a))
            mem[side, m] = fn(den, ctx_dim, dtype, args, side, m)
    rows = []
    for side in sizes:
        r = step_times(den, ctx_dim, dtype, args, side, modes)
        for m in modes:
            r[m]["peak_mib"] = mem[side, m]
        rows.append((side, r))

    print(f"\nMachine: {machine(args)}\n")
    if set(modes) != {"untiled", "none", "fstd", "explicit"}:
        print("| output px | mode | s/step | first step s | tiles a step | U-Net calls a step | peak MiB |")
        print("|---|---|---|---|---|---|---|")
        for side, r in rows:
            for m in modes:
                print(f"| {side}x{side} | {m} | {r[m]['s_per_step']:.3f} | {r[m]['first_step']:.3f} | {r[m]['tiles']:.2f} | "
                      f"{r[m]['calls']:.2f} | {r[m]['peak_mib']:.0f} |")
        print(f"\nTotal {time.time() - t_start:.0f} s.")
        return
    print("| output px | latent | tiles none/FSTD/explicit | untiled s/step | none s/step | FSTD s/step "
          "| explicit s/step | FSTD/none | FSTD/explicit | FSTD step 0: s (tiles) | peak MiB untiled/none/FSTD/explicit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for side, r in rows:
        get = lambda m, k: r.get(m, {}).get(k, float("nan"))  # noqa: E731
        ratio = lambda a, b: get(a, "s_per_step") / get(b, "s_per_step")  # noqa: E731
        print(f"| {side}x{side} | {side // 8}x{side // 8} | "
              f"{get('none', 'tiles'):.0f}/{get('fstd', 'tiles'):.2f}/{get('explicit', 'tiles'):.0f} | "
              + " | ".join(f"{get(m, 's_per_step'):.3f}" for m in ("untiled", "none", "fstd", "explicit"))
              + f" | {ratio('fstd', 'none'):.3f} | {ratio('fstd', 'explicit'):.3f} | "
              + f"{get('fstd', 'first_step'):.3f} ({get('fstd', 'first_tiles'):.0f}) | "
              + "/".join(f"{get(m, 'peak_mib'):.0f}" for m in ("untiled", "none", "fstd", "explicit")) + " |")
    print(f"\nTotal {time.time() - t_start:.0f} s.")


if __name__ == "__main__":
    main()
