"""FreeU overhead per U-Net forward, measured side by side (interleaved runs) in one process.

    .venv/bin/python tests/benchmarks/bench_freeu.py [--device cuda] [--dtype fp16] [--repeats N]

Shapes: SD1.5's U-Net (model_channels 320, context 768) at a 64×64 latent (512² image) and a small
shape (32×32 latent), batch 2 (cond + uncond, as the WebUI's CFG batch). Random weights: FreeU's cost
does not depend on them. Prints a markdown table and the machine. ``tests/gpu/check.sh`` measures the
same (``freeu_overhead``) for SD1.5 and SDXL on a GPU.
"""

import argparse
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "webui_stub")]

import torch  # noqa: E402

from lib_freediff.freeu.unet import FreeUFactors, FreeUPatch, _StageHook  # noqa: E402
from tiny_sd import sd15_unet, to_webui_precision  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FREEU_V2_SD15 = FreeUFactors(2, 1.5, 1.6, 0.9, 0.2)


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def freeu_overhead(unet, inputs: dict, factors: FreeUFactors, device: str, repeats: int, warmup: int):
    """Median seconds of ``unet(**inputs)`` without and with FreeU (runs interleaved, so drift hits both alike),
    and of the FreeU hooks alone on the exact inputs of the stage blocks (far less noisy). Half precision runs
    under autocast, as the WebUI runs its half-precision U-Net."""
    patch = FreeUPatch(unet, factors)
    dtype = unet.dtype
    with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        def run():
            unet(**inputs)
        for _ in range(warmup):
            run()
            with patch:
                run()
        plain, freeu = [], []
        for _ in range(repeats):
            plain.append(timed(run, device))
            patch.attach()
            freeu.append(timed(run, device))
            patch.remove()
        stage_inputs = []
        grab = [unet.output_blocks[s.block_index].register_forward_pre_hook(lambda m, a, s=s: stage_inputs.append((s, a[0].clone())))
                for s in patch.stages]
        run()
        for handle in grab:
            handle.remove()
        hooks = [_StageHook(patch, s) for s, _ in stage_inputs]
        ops = []
        for _ in range(repeats * 4):
            batch = [(h, x.clone()) for h, (_, x) in zip(hooks, stage_inputs)]
            ops.append(timed(lambda: [h(None, (x,)) for h, x in batch], device))
    return statistics.median(plain), statistics.median(freeu), statistics.median(ops)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]
    repeats = args.repeats or (5 if args.device == "cpu" else 50)

    unet = to_webui_precision(sd15_unet(), args.device, dtype)
    rows = []
    for latent in (64, 32):
        inputs = dict(x=torch.randn(2, 4, latent, latent, device=args.device, dtype=dtype),
                      timesteps=torch.tensor([500, 500], device=args.device),
                      context=torch.randn(2, 77, 768, device=args.device, dtype=dtype))
        p, f, o = freeu_overhead(unet, inputs, FREEU_V2_SD15, args.device, repeats, 2 if args.device == "cpu" else 10)
        rows.append((f"{latent}×{latent} latent ({latent * 8}² px), batch 2", p, f, o))

    print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"device {args.device}{' ' + torch.cuda.get_device_name() if args.device == 'cuda' else ''}, {args.dtype}, median of {repeats}")
    print()
    print("| shape | U-Net forward | with FreeU v2 | side-by-side overhead | FreeU hooks alone | hooks / forward |")
    print("|---|---|---|---|---|---|")
    for name, p, f, o in rows:
        print(f"| {name} | {p * 1000:.1f} ms | {f * 1000:.1f} ms | {100 * (f / p - 1):+.2f}% | {o * 1000:.2f} ms | {100 * o / p:.2f}% |")


if __name__ == "__main__":
    main()
