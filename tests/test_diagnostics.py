"""The opt-in U-Net work counter the side-by-side benchmark reads from a live WebUI."""

import time

import pytest

from harness import WebUI
from lib_freediff.webui import diagnostics

PATH = "/freediff/v1/diagnostics/unet"


def test_counts_every_unet_call_when_enabled(sd1, monkeypatch):
    monkeypatch.setenv("FREEDIFF_DIAGNOSTICS", "1")
    client = WebUI(sd_model=sd1).api_client()
    assert client.delete(PATH).json()["calls"] == 0
    seen = []
    unet = sd1.model.diffusion_model
    handles = [unet.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape))),
               # a known 0.1 s inside every U-Net forward: the reported time must include it
               next(unet.children()).register_forward_pre_hook(lambda m, a: time.sleep(0.1))]
    try:
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a bay", "steps": 3, "width": 64, "height": 96, "seed": 2})
    finally:
        for handle in handles:
            handle.remove()
    assert r.status_code == 200
    report = client.get(PATH).json()
    assert report["calls"] == len(seen) == 3  # one batched cond/uncond call a step
    assert report["latent_cells"] == sum(s[0] * s[-2] * s[-1] for s in seen) == 3 * 2 * 8 * 12
    assert [(row["shape"], row["calls"]) for row in report["shapes"]] == [([2, 4, 12, 8], 3)]
    assert 0.3 <= report["shapes"][0]["seconds"] == report["unet_seconds"] <= report["step_seconds"] < 60
    assert report["callbacks"] == {}  # none of our features was on
    assert client.delete(PATH).json() == {"calls": 0, "latent_cells": 0, "unet_seconds": 0.0, "step_seconds": 0.0,
                                          "shapes": [], "callbacks": {}}
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a bay", "steps": 3, "width": 64, "height": 64, "seed": 2,
                                               "alwayson_scripts": {"FreeU": {"args": [{"enabled": True}]}}})
    assert r.status_code == 200
    callbacks = client.get(PATH).json()["callbacks"]
    assert list(callbacks) == ["FreeU"] and callbacks["FreeU"]["calls"] == 3 and 0 <= callbacks["FreeU"]["seconds"] < 5
    diagnostics.COUNTER.detach()


def test_off_by_default(sd1, monkeypatch):
    monkeypatch.delenv("FREEDIFF_DIAGNOSTICS", raising=False)
    client = WebUI(sd_model=sd1).api_client()
    assert client.get(PATH).status_code == 404
    unet = sd1.model.diffusion_model
    before = len(unet._forward_pre_hooks), len(unet._forward_hooks)
    client.post("/sdapi/v1/txt2img", json={"prompt": "a bay", "steps": 2, "width": 64, "height": 64})
    assert (len(unet._forward_pre_hooks), len(unet._forward_hooks)) == before
