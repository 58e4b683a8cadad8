"""The seam metric of Any-Size Diffusion's tiled pass and the stage-II-like run it is measured on, shared by
tests/asd/test_fstd.py (``test_seams_on_real_unet``), tests/freeu/test_tiled.py and
tests/benchmarks/bench_freeu_tiles.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def border_ratio(x: torch.Tensor, tile: int) -> float:
    """Mean squared step across the fixed grid's tile borders / across every other column and row."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean((0, 1, 2))
    dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean((0, 1, 3))
    borders = [b - 1 for b in range(tile, x.shape[-1], tile)]
    mask = torch.ones(dx.shape[0], dtype=torch.bool)
    mask[borders] = False
    return (torch.cat([dx[borders], dy[borders]]).mean() / torch.cat([dx[mask], dy[mask]]).mean()).item()


def text_context(batch: int = 1, seed: int = 0, dim: int = 32) -> dict:
    """A random cross-attention context in the WebUI's cond layout."""
    return {"c_crossattn": [torch.randn(batch, 8, dim, generator=torch.Generator().manual_seed(seed))]}


def smooth_run(denoiser, seed: int, size: int = 48, steps: int = 10, context_dim: int = 32) -> torch.Tensor:
    """A smooth latent (6×6 noise, bicubic to ``size``²) denoised from sigma 3 with Euler (Karras sigmas down to
    0.03) by ``denoiser``: a k-diffusion denoiser, or a TiledDenoiser over one (told each step before its call)."""
    import k_diffusion as K

    g = torch.Generator().manual_seed(seed)
    x0 = F.interpolate(torch.randn(1, 4, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    sigmas = K.sampling.get_sigmas_karras(steps, 0.03, 3.0)
    calls = [0]

    def model(x, sigma, **kw):
        if hasattr(denoiser, "set_step"):
            denoiser.set_step(calls[0])
        calls[0] += 1
        return denoiser(x, sigma, **kw)

    with torch.no_grad():
        return K.sampling.sample_euler(model, x0, sigmas, extra_args={"cond": text_context(1, seed, context_dim)},
                                       disable=True)
