"""Opt-in U-Net work counter for benchmarks: with ``FREEDIFF_DIAGNOSTICS=1`` in the WebUI's environment, every U-Net
call of every generation (ours, plain ones, other extensions' tiled ones) is counted by a forward pre-hook, and
``GET /freediff/v1/diagnostics/unet`` reports the calls and their input shapes since the last
``DELETE /freediff/v1/diagnostics/unet``. Off (the default): nothing is hooked and the routes do not exist."""

from __future__ import annotations

import os
from collections import Counter

from modules import script_callbacks, shared

PATH = "/freediff/v1/diagnostics/unet"


def enabled() -> bool:
    return os.environ.get("FREEDIFF_DIAGNOSTICS", "") == "1"


class UNetCounter:
    def __init__(self):
        self.shapes: Counter = Counter()
        self._hooked: dict[int, object] = {}

    def attach(self, unet) -> None:
        """Counts ``unet``'s calls (once per U-Net object: a checkpoint change brings a new one)."""
        if unet is None or id(unet) in self._hooked:
            return
        self.detach()
        self._hooked = {id(unet): unet.register_forward_pre_hook(self._count)}

    def detach(self) -> None:
        for handle in self._hooked.values():
            handle.remove()
        self._hooked = {}

    def _count(self, module, args):
        x = args[0] if args else None
        if x is not None and hasattr(x, "shape"):
            self.shapes[tuple(int(v) for v in x.shape)] += 1

    def report(self) -> dict:
        calls = sum(self.shapes.values())
        cells = sum(n * s[0] * s[-2] * s[-1] for s, n in self.shapes.items())
        return {"calls": calls, "latent_cells": cells,
                "shapes": [{"shape": list(s), "calls": n} for s, n in sorted(self.shapes.items())]}

    def reset(self) -> None:
        self.shapes.clear()


COUNTER = UNetCounter()


def _on_cfg_denoiser(params) -> None:
    # runs before the U-Net calls of every sampler step, whoever makes them
    COUNTER.attach(getattr(getattr(getattr(shared, "sd_model", None), "model", None), "diffusion_model", None))


def _on_app_started(demo, app) -> None:
    if any(getattr(r, "path", "") == PATH for r in app.routes):
        return

    @app.get(PATH)
    def unet_work():
        return COUNTER.report()

    @app.delete(PATH)
    def reset_unet_work():
        COUNTER.reset()
        return COUNTER.report()


def register_callbacks() -> None:
    if not enabled():
        return
    script_callbacks.remove_callbacks_for_function(_on_cfg_denoiser)
    script_callbacks.on_cfg_denoiser(_on_cfg_denoiser, name="freediff_diagnostics")
    script_callbacks.remove_callbacks_for_function(_on_app_started)
    script_callbacks.on_app_started(_on_app_started, name="freediff_diagnostics")
