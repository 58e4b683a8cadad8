"""The two FreeU operations on one decoder stage's features."""

from __future__ import annotations

import torch


def structure_scale(h: torch.Tensor, b: float) -> torch.Tensor:
    """v2 backbone factor map ``1 + (b − 1)·m̂`` (B×1×H×W), m̂ the per-sample min-max normalised channel mean.

    A constant mean map (max = min) has no structure to follow: m̂ is taken as 0 there (factor 1),
    where the reference divides by zero and returns NaN.
    """
    mean = h.mean(dim=1, keepdim=True)
    flat = mean.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = hi - lo
    norm = torch.where(span > 0, (mean - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(mean))
    return 1 + (b - 1) * norm


def scale_backbone_(h: torch.Tensor, b: float, version: int) -> torch.Tensor:
    """Scales the first C/2 channels of the backbone feature ``h`` in place (v1: by b; v2: by the structure map)."""
    half = h.shape[1] // 2
    if version == 1:
        h[:, :half].mul_(b)
    else:
        h[:, :half].mul_(structure_scale(h, b).to(h.dtype))
    return h


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scales the low-frequency box (half-width ``threshold`` around the centred zero frequency) by ``scale``.

    FFT2 → centre shift → box × scale → inverse shift → inverse FFT → real part. Computed in float32
    (FFTs of half precision are unsupported on CPU and for non-power-of-two sizes) and cast back.
    """
    dtype = x.dtype
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    freq = torch.fft.fftshift(torch.fft.fftn(xf, dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    ch, cw = h // 2, w // 2
    freq[..., max(ch - threshold, 0):ch + threshold, max(cw - threshold, 0):cw + threshold] *= scale
    out = torch.fft.ifftn(torch.fft.ifftshift(freq, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(dtype)
