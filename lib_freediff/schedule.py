"""Sampler-step bookkeeping shared by the features that act on some steps only."""

from __future__ import annotations


def sampler_step(call_index: int, steps: int, total_calls: int) -> int:
    """The sampler step a denoiser call belongs to.

    The WebUI's CFG denoiser counts its calls (``step``) and knows the sampler's steps and expected
    calls (``steps``, ``total_steps`` = 2×steps for second-order samplers such as Heun/DPM2). Both
    calls of a second-order step map to the same step; the WebUI's own ``state.sampling_step`` lags
    one step behind on the first call of each step, so it cannot be used.
    """
    if steps <= 0:
        return 0
    total_calls = max(total_calls or steps, steps)
    return min(call_index * steps // total_calls, steps - 1)


def in_window(step: int, steps: int, start: float, end: float) -> bool:
    """True when sampler step ``step`` (0-based) of ``steps`` lies in [start·steps, end·steps)."""
    if steps <= 0:
        return False
    # a tiny tolerance so start=0.3, steps=10 includes step 3 despite 0.3*10 == 3.0000000000000004
    return start * steps - 1e-9 <= step < end * steps - 1e-9
