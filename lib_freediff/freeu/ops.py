"""The two FreeU operations on one decoder stage's features."""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def structure_scale(h: torch.Tensor, b: float, bounds: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """v2 backbone factor map ``1 + (b − 1)·m̂`` (B×1×H×W), m̂ the per-sample min-max normalised channel mean.

    A constant mean map (max = min) has no structure to follow: m̂ is taken as 0 there (factor 1),
    where the reference divides by zero and returns NaN. ``bounds``: the ``(min, max)`` to normalise by
    (B×1×1×1 each) instead of the sample's own, e.g. those of the whole image when ``h`` is one tile of
    it (:mod:`lib_freediff.freeu.tiled`); m̂ is then clipped to [0, 1], so the factor stays in [1, b].
    """
    mean = h.mean(dim=1, keepdim=True)
    if bounds is None:
        flat = mean.flatten(1)
        lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
        hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    else:
        lo, hi = bounds
    span = hi - lo
    norm = torch.where(span > 0, (mean - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(mean))
    if bounds is not None:
        norm = norm.clamp(0, 1)
    return 1 + (b - 1) * norm


def scale_backbone_(h: torch.Tensor, b: float, version: int,
                    bounds: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Scales the first C/2 channels of the backbone feature ``h`` in place (v1: by b; v2: by the structure map,
    normalised by ``bounds`` when given: see :func:`structure_scale`)."""
    half = h.shape[1] // 2
    if version == 1:
        h[:, :half].mul_(b)
    else:
        h[:, :half].mul_(structure_scale(h, b, bounds).to(h.dtype))
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


def box_frequencies(n: int, threshold: int) -> Tuple[int, ...]:
    """The signed frequencies along an axis of ``n`` cells that :func:`fourier_filter`'s box covers:
    ``-threshold … threshold − 1`` (clipped to the axis), e.g. ``(-1, 0)`` with threshold 1."""
    c = n // 2
    return tuple(i - c for i in range(max(c - threshold, 0), min(c + threshold, n)))
