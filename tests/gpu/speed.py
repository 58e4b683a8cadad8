"""Speed and memory at real sizes (fp16 on a GPU): FreeU's added time per step, FSTD's time per step against an
untiled step for each tile batch, tiled VAE against untiled. Modes of one comparison run interleaved, so that
drift and clock changes hit them alike; peak memory is the largest ``max_memory_allocated`` during a call above
what was allocated before it (weights and inputs excluded)."""

from __future__ import annotations

import statistics

import torch

from common import Run, precision, unet_inputs
from precision_checks import K_BATCH, K_VAE

FASTEST_WITHIN = 0.03  # tile batches this close to the fastest count as equally fast when picking the default


class Peak:
    """Times a call (device synchronised) and records its peak memory above what was allocated before it."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"
        self.device_type = torch.device(device).type

    def __call__(self, fn):
        from bench_freeu import timed

        result = []
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        seconds = timed(lambda: result.append(fn()), self.device_type)
        peak = torch.cuda.max_memory_allocated() - before if self.cuda else float("nan")
        return result[0], seconds, peak


def mib(nbytes: float) -> str:
    return "n/a (CPU)" if nbytes != nbytes else f"{nbytes / 2**20:,.0f} MiB"


def freeu(run: Run):
    from bench_freeu import freeu_overhead
    from lib_freediff.freeu.params import FAMILY_VALUES
    from lib_freediff.freeu.unet import FreeUFactors

    p, rep, dev = run.profile, run.report, run.profile.device
    repeats, warmup = p.freeu_repeats
    for spec in p.unets:
        latent = p.freeu_bench_latents[spec.name]
        unet = run.models.unet(spec, p.speed_dtype)
        inputs = unet_inputs(spec, latent, 2, dev, p.speed_dtype)
        plain, with_freeu, hooks = freeu_overhead(unet, inputs, FreeUFactors(2, **FAMILY_VALUES[spec.freeu_preset]),
                                                  torch.device(dev).type, repeats, warmup)
        added = with_freeu / plain - 1
        rep.add("FreeU speed", f"{spec.name} U-Net forward, {latent * 8}² px, batch 2, median of {repeats} interleaved",
                p.speed_dtype, f"{plain * 1000:.1f} ms → {with_freeu * 1000:.1f} ms with FreeU: {100 * added:+.2f} %; "
                               f"its hooks alone {100 * hooks / plain:.2f} %", "≤ 1 % added",
                "info (CPU)" if p.dry_run else ("met" if added <= 0.01 else "not met"))


def _time_modes(calls: dict, steps: int, peak: Peak):
    """``calls``: {mode: (set_step or None, call)}. Runs step 0 and ``steps`` steady steps of every mode, the modes
    interleaved in rotating order; returns per mode the seconds of step 0, of the steady steps, the largest peak and
    the last output."""
    names = list(calls)
    first, steady, peaks, last = {}, {n: [] for n in names}, {}, {}
    for i in range(steps + 1):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            set_step, call = calls[name]
            if set_step is not None:
                set_step(i)
            last[name], seconds, used = peak(call)
            if i:
                steady[name].append(seconds)
            else:
                first[name] = seconds
            peaks[name] = max(peaks.get(name, used), used)
    return first, steady, peaks, last


def fstd(run: Run):
    from lib_freediff.asd.fstd import TiledDenoiser, default_tile_batch
    from tiny_sd import UNetAsLDM

    p, rep, dev, dtype = run.profile, run.report, run.profile.device, run.profile.speed_dtype
    peak = Peak(dev)
    areas = [side * side for _ in p.unets for side in p.fstd_sides]
    for spec in p.unets:
        model = UNetAsLDM(run.models.unet(spec, dtype)).to(dev)
        for side in p.fstd_sides:
            where = f"{spec.name}, {side}² px ({side // 8}² latent), batch 2"
            estimate = p.estimates["speed_fstd"] * side * side / sum(areas)
            if not run.budget.fits(estimate):
                rep.skip("FSTD speed", where, run.budget.reason(estimate))
                continue
            inputs = unet_inputs(spec, side // 8, 2, dev, dtype)
            x, t = inputs["x"], inputs["timesteps"]
            cond = ({"crossattn": inputs["context"], "vector": inputs["y"]} if spec.adm_dim else
                    {"c_crossattn": [inputs["context"]]})

            def tiler(tile_batch):
                return TiledDenoiser(model.apply_model, mode="implicit", tile=p.tile, offset_range=p.offset_range,
                                     tile_batch=tile_batch, seed=0, prediction="eps", alphas_cumprod=model.alphas_cumprod)

            def untiled():
                return model.apply_model(x, t, cond)

            try:
                with precision(dev, dtype):
                    # warm-up at every shape a mode calls: the covering first step's grid and a shifted one
                    untiled()
                    for b in p.tile_batches:
                        warm = tiler(b)
                        for i in range(2):
                            warm.set_step(i)
                            warm(x, t, cond=cond)
                    tilers = {f"tile batch {b}": tiler(b) for b in p.tile_batches}
                    calls = {"untiled": (None, untiled),
                             **{name: (den.set_step, lambda den=den: den(x, t, cond=cond)) for name, den in tilers.items()}}
                    first, steady, peaks, last = _time_modes(calls, p.fstd_steady_steps, peak)
            except torch.cuda.OutOfMemoryError as e:
                rep.skip("FSTD speed", where, f"out of memory ({str(e).splitlines()[0][:120]})")
                continue
            base = statistics.median(steady["untiled"])
            rep.add("FSTD speed", f"{where}: untiled", dtype, f"{base * 1000:.0f} ms/step; peak +{mib(peaks['untiled'])}",
                    f"median of {p.fstd_steady_steps} steady step(s)")
            for name in tilers:
                s = statistics.median(steady[name])
                rep.add("FSTD speed", f"{where}: {name}", dtype,
                        f"{s * 1000:.0f} ms/step = {s / base:.2f}× untiled; first step {first[name] * 1000:.0f} ms; "
                        f"peak +{mib(peaks[name])}", f"median of {p.fstd_steady_steps} steady step(s)")
            rep.finite("FSTD speed", "speed.fstd.finite", f"{where}: every mode's output", list(last.values()), dtype)
            largest = f"tile batch {max(p.tile_batches)}"
            rep.compare("FSTD speed", "speed.fstd.batch", f"{where}: {largest} vs 1, same tiles", last[largest],
                        last["tile batch 1"], dtype, K_BATCH)
            by_batch = {b: statistics.median(steady[f"tile batch {b}"]) for b in p.tile_batches}
            fastest = min(by_batch.values())
            near = [b for b, s in by_batch.items() if s <= fastest * (1 + FASTEST_WITHIN)]
            rep.add("FSTD speed", f"{where}: tile batch to pick", dtype,
                    f"fastest {min(by_batch, key=by_batch.get)}; within {100 * FASTEST_WITHIN:.0f} % of it: {near} "
                    f"(smallest: {min(near)}, peak +{mib(peaks[f'tile batch {min(near)}'])})",
                    f"default on a GPU today: {default_tile_batch('cuda')}")


def tiled_vae(run: Run):
    from lib_freediff.asd.tiled_vae import tiled_decode, tiled_encode

    p, rep, dev, dtype = run.profile, run.report, run.profile.device, run.profile.speed_dtype
    peak = Peak(dev)
    vae = run.models.vae(dtype)
    side = p.vae_side
    # the extension's default tiles (128 latent px, 1024 px) at full size; the check's tile in a dry run
    tile_latent = 128 if not p.dry_run else p.vae_check_tile
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1, 4, side // 8, side // 8, generator=g).to(dev, dtype)
    image = (torch.rand(1, 3, side, side, generator=g) * 2 - 1).to(dev, dtype)
    cases = {
        "decode": (lambda: vae.decode(z), lambda: tiled_decode(vae, z, tile_latent=tile_latent),
                   f"tiles of {tile_latent} latent px"),
        "encode": (lambda: vae.encode(image).mode(), lambda: tiled_encode(vae, image, tile_px=8 * tile_latent).mode(),
                   f"tiles of {8 * tile_latent} px"),
    }
    repeats = 2 if p.dry_run else 3
    for what, (untiled_fn, tiled_fn, tiles) in cases.items():
        where = f"{what} {side}² px"
        estimate = p.estimates["speed_vae"] / len(cases)
        if not run.budget.fits(estimate):
            rep.skip("tiled VAE speed", where, run.budget.reason(estimate))
            continue
        calls = {"untiled": (None, untiled_fn), "tiled": (None, tiled_fn)}
        try:
            with torch.inference_mode():
                _, times, peaks, outs = _time_modes(calls, repeats, peak)  # its first call of each: the warm-up
        except torch.cuda.OutOfMemoryError as e:
            rep.skip("tiled VAE speed", where, f"out of memory ({str(e).splitlines()[0][:120]})")
            continue
        base, tiled = statistics.median(times["untiled"]), statistics.median(times["tiled"])
        rep.add("tiled VAE speed", f"{where}: untiled", dtype, f"{base * 1000:.0f} ms; peak +{mib(peaks['untiled'])}",
                f"median of {repeats}")
        rep.add("tiled VAE speed", f"{where}: tiled ({tiles})", dtype,
                f"{tiled * 1000:.0f} ms = {tiled / base:.2f}× untiled; peak +{mib(peaks['tiled'])}", f"median of {repeats}")
        rep.finite("tiled VAE speed", "speed.vae.finite", f"{where}: outputs", [outs["tiled"], outs["untiled"]], dtype)
        rep.compare("tiled VAE speed", "speed.vae.tiles", f"{where}: tiled vs untiled, both half", outs["tiled"],
                    outs["untiled"], dtype, K_VAE)
