"""FreeU's operations against an independent implementation of the paper's formulas (numpy)."""

import numpy as np
import pytest
import torch

from lib_freediff.freeu.ops import fourier_filter, scale_backbone_, structure_scale


def reference_backbone(h: np.ndarray, b: float, version: int) -> np.ndarray:
    out = h.astype(np.float64).copy()
    half = h.shape[1] // 2
    for n in range(h.shape[0]):
        if version == 1:
            alpha = b
        else:
            mean = h[n].astype(np.float64).mean(axis=0)
            lo, hi = mean.min(), mean.max()
            norm = (mean - lo) / (hi - lo) if hi > lo else np.zeros_like(mean)
            alpha = (b - 1) * norm + 1
        out[n, :half] = out[n, :half] * alpha
    return out


def reference_fourier(x: np.ndarray, threshold: int, scale: float) -> np.ndarray:
    freq = np.fft.fftshift(np.fft.fft2(x.astype(np.float64)), axes=(-2, -1))
    h, w = x.shape[-2:]
    mask = np.ones((h, w))
    for i in range(h):
        for j in range(w):
            if h // 2 - threshold <= i < h // 2 + threshold and w // 2 - threshold <= j < w // 2 + threshold:
                mask[i, j] = scale
    return np.fft.ifft2(np.fft.ifftshift(freq * mask, axes=(-2, -1))).real


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2)])
def test_backbone_scaling_matches_formula(version, dtype, tol):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 8, 6, 5, generator=g).to(dtype)
    expected = reference_backbone(h.float().numpy(), 1.4, version)
    got = scale_backbone_(h.clone(), 1.4, version)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.float().numpy(), expected, atol=tol, rtol=tol)


def test_only_first_half_of_channels_is_scaled():
    h = torch.randn(1, 7, 4, 4)
    out = scale_backbone_(h.clone(), 2.0, 1)
    assert torch.equal(out[:, 3:], h[:, 3:])  # C//2 = 3 channels scaled, not C/2 + 1
    assert torch.allclose(out[:, :3], h[:, :3] * 2)


def test_constant_mean_map_gives_no_nan():
    h = torch.ones(2, 4, 8, 8)
    scale = structure_scale(h, 1.5)
    assert torch.isfinite(scale).all()
    assert torch.equal(scale, torch.ones_like(scale))


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (1, 3, 7, 9), (1, 2, 16, 12)])
@pytest.mark.parametrize("threshold", [1, 2])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_fourier_filter_matches_formula(shape, threshold, dtype, tol):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g).to(dtype)
    expected = reference_fourier(x.float().numpy(), threshold, 0.2)
    got = fourier_filter(x, threshold, 0.2)
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_allclose(got.float().numpy(), expected, atol=tol * 4, rtol=tol)


def test_fourier_filter_scale_one_is_identity():
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(fourier_filter(x, 1, 1.0), x, atol=1e-6)
