"""FreeU overhead per U-Net forward, measured side by side (interleaved runs) in one process.

    .venv/bin/python tests/benchmarks/bench_freeu.py [--device cuda] [--dtype fp16] [--repeats N]

Shapes: SD1.5's U-Net (model_channels 320, context 768) at a 64×64 latent (512² image) and a small
shape (32×32 latent), batch 2 (cond + uncond, as the WebUI's CFG batch). Random weights: FreeU's cost
does not depend on them. Prints a markdown table and the machine.
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
from ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402

from lib_freediff.freeu.unet import FreeUFactors, FreeUPatch, _StageHook  # noqa: E402


def sd15_unet():
    return UNetModel(image_size=64, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                     num_res_blocks=2, channel_mult=(1, 2, 4, 4), num_heads=8, use_spatial_transformer=True,
                     transformer_depth=1, context_dim=768, legacy=False).eval()


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    repeats = args.repeats or (5 if args.device == "cpu" else 50)

    torch.manual_seed(0)
    unet = sd15_unet().to(args.device, dtype)
    patch = FreeUPatch(unet, FreeUFactors(2, 1.5, 1.6, 0.9, 0.2))
    rows = []
    for latent in (64, 32):
        x = torch.randn(2, 4, latent, latent, device=args.device, dtype=dtype)
        t = torch.tensor([500, 500], device=args.device)
        ctx = torch.randn(2, 77, 768, device=args.device, dtype=dtype)
        with torch.inference_mode():
            def run():
                unet(x, t, context=ctx)
            for _ in range(2 if args.device == "cpu" else 10):  # warm-up both paths
                run()
                with patch:
                    run()
            plain, freeu = [], []
            for _ in range(repeats):  # interleaved, so drift hits both alike
                plain.append(timed(run, args.device))
                patch.attach()
                freeu.append(timed(run, args.device))
                patch.remove()
            # the hooks' own work, timed alone on the exact inputs of the stage blocks (far less noisy)
            inputs = []
            grab = [unet.output_blocks[s.block_index].register_forward_pre_hook(lambda m, a, s=s: inputs.append((s, a[0].clone())))
                    for s in patch.stages]
            run()
            for handle in grab:
                handle.remove()
            hooks = [_StageHook(patch, s) for s, _ in inputs]
            ops = []
            for _ in range(repeats * 4):
                batch = [(h, x.clone()) for h, (_, x) in zip(hooks, inputs)]
                ops.append(timed(lambda: [h(None, (x,)) for h, x in batch], args.device))
        p, f = statistics.median(plain), statistics.median(freeu)
        o = statistics.median(ops)
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
