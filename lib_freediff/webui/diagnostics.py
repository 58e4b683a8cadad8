"""Opt-in U-Net work counter and timer for benchmarks: with ``FREEDIFF_DIAGNOSTICS=1`` in the WebUI's environment,
every U-Net call of every generation (ours, plain ones, other extensions' tiled ones) is counted by a forward pre-hook
and timed up to its forward hook, each sampler step is timed from the ``cfg_denoiser`` to the ``cfg_after_cfg``
callback (the U-Net calls plus whatever a tiler does around them; Forge has no ``cfg_denoised`` callback), each of our
features' ``cfg_denoiser`` callbacks is timed (FastComposer's fuse and delayed switch, the tiler's step), and
``GET /freediff/v1/diagnostics/unet`` reports the calls, their input shapes and these times since the last
``DELETE /freediff/v1/diagnostics/unet``. Off (the default): nothing is hooked or timed and the routes do not exist."""

from __future__ import annotations

import os
import time
from collections import Counter
from contextlib import contextmanager, nullcontext

import torch
from modules import script_callbacks, shared

from lib_freediff.webui import host
PATH = "/freediff/v1/diagnostics/unet"


def enabled() -> bool:
    return os.environ.get("FREEDIFF_DIAGNOSTICS", "") == "1"


class UNetCounter:
    def __init__(self):
        self.shapes: Counter = Counter()
        self.shape_seconds: Counter = Counter()  # keyed like shapes; None for a call without a tensor input
        self.step_seconds = 0.0
        self.callback_calls: Counter = Counter()  # by feature: its cfg_denoiser callback's calls and seconds
        self.callback_seconds: Counter = Counter()
        self._step_started: float | None = None
        self._started: list[tuple] = []  # a stack: a U-Net called inside another's forward is timed on its own
        self._hooked: dict[int, list] = {}

    def attach(self, unet) -> None:
        """Counts ``unet``'s calls (once per U-Net object: a checkpoint change brings a new one)."""
        if unet is None or id(unet) in self._hooked:
            return
        self.detach()
        self._hooked = {id(unet): [unet.register_forward_pre_hook(self._count), unet.register_forward_hook(self._stop)]}

    def detach(self) -> None:
        for handles in self._hooked.values():
            for handle in handles:
                handle.remove()
        self._hooked = {}
        self._started = []

    def _count(self, module, args):
        x = args[0] if args else None
        shape = None
        if x is not None and hasattr(x, "shape"):
            shape = tuple(int(v) for v in x.shape)
            self.shapes[shape] += 1
            _sync(x)
        self._started.append((shape, time.perf_counter()))

    def _stop(self, module, args, output):
        if self._started:
            _sync(output)
            shape, started = self._started.pop()
            self.shape_seconds[shape] += time.perf_counter() - started

    def step_started(self, x) -> None:
        _sync(x)
        self._step_started = time.perf_counter()

    def step_ended(self, x) -> None:
        if self._step_started is not None:
            _sync(x)
            self.step_seconds += time.perf_counter() - self._step_started
            self._step_started = None

    @contextmanager
    def callback(self, feature: str):
        """Times one of ``feature``'s cfg_denoiser callbacks."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.callback_calls[feature] += 1
            self.callback_seconds[feature] += time.perf_counter() - started

    def report(self) -> dict:
        calls = sum(self.shapes.values())
        cells = sum(n * s[0] * s[-2] * s[-1] for s, n in self.shapes.items())
        return {"calls": calls, "latent_cells": cells, "unet_seconds": round(sum(self.shape_seconds.values()), 4),
                "step_seconds": round(self.step_seconds, 4),
                "shapes": [{"shape": list(s), "calls": n, "seconds": round(self.shape_seconds[s], 4)}
                           for s, n in sorted(self.shapes.items())],
                "callbacks": {f: {"calls": n, "seconds": round(self.callback_seconds[f], 6)}
                              for f, n in sorted(self.callback_calls.items())}}

    def reset(self) -> None:
        self.shapes.clear()
        self.shape_seconds.clear()
        self.callback_calls.clear()
        self.callback_seconds.clear()
        self.step_seconds = 0.0
        self._started, self._step_started = [], None


def _sync(x) -> None:
    # a GPU runs ahead of Python: wait for its queue so the time is the U-Net's own
    if getattr(x, "is_cuda", False):
        torch.cuda.synchronize(x.device)


COUNTER = UNetCounter()


def timed_callback(feature: str):
    """A context timing one of ``feature``'s cfg_denoiser callbacks when diagnostics are on (else nothing)."""
    return COUNTER.callback(feature) if enabled() else nullcontext()


def _on_cfg_denoiser(params) -> None:
    # runs before the U-Net calls of every sampler step, whoever makes them
    COUNTER.attach(host.current().unet(getattr(shared, "sd_model", None)))
    COUNTER.step_started(params.x)


def _on_cfg_after_cfg(params) -> None:
    COUNTER.step_ended(params.x)


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
    script_callbacks.remove_callbacks_for_function(_on_cfg_after_cfg)
    script_callbacks.on_cfg_after_cfg(_on_cfg_after_cfg, name="freediff_diagnostics")
    script_callbacks.remove_callbacks_for_function(_on_app_started)
    script_callbacks.on_app_started(_on_app_started, name="freediff_diagnostics")
