"""The three features in one generation, as a user makes a large personalised picture: FastComposer's subjects in the
first pass and (by default) the hires pass, FreeU, and Any-Size Diffusion's hires pass to an exact size. Shared by the
A1111 leg (tests/fastcomposer_webui/test_all_three.py) and the Forge leg (tests/forge/test_forge_all_three.py): the
settings, and the checks that the subjects reach every tile and that the infotext pastes all three back."""

from __future__ import annotations

import torch

import pytest

from harness import (b64_png, image_from_b64, infotexts_of, make_image, noun_positions, prompt_encoder, same_images,
                     unet_contexts, unet_fails_at_call, unet_interrupts_at_call)
from lib_freediff.fastcomposer.conditioning import delayed_switch_step
from lib_freediff.webui import fastcomposer as fc
from lib_freediff.presets import feature_slug
from lib_freediff.webui import features, host
from modules import infotext_utils, shared

FC, FREEU, ASD = "FastComposer", "FreeU", "Any-Size Diffusion"
PROMPT = "a man img and a woman img at the beach"
CLEAN = "a man and a woman at the beach"
NEGATIVE = "blurry"
IMAGES = [make_image(48, 64, seed=11), make_image(64, 40, seed=12)]
ALPHA = 0.5
SIZES = [(1000, 600, 512), (301, 173, 128)]  # (width, height, tile px): 2×2 tiles of 504×304 px; 3×2 of 104×88 px
KEYS = ("FastComposer: ", "FreeU: version=2", "ASD: width={width} height={height}")


def settings(width: int, height: int, tile: int = 512, alpha: float = ALPHA, **asd) -> dict:
    """Each panel's values (named), for the UI and the API alike; the hires pass denoises fully so that it runs all
    its steps."""
    return {FC: {"enabled": True, "images": IMAGES, "alpha": alpha},
            FREEU: {"enabled": True},
            ASD: {"enabled": True, "width": width, "height": height, "tile": tile, "offset_range": min(256, tile), "steps": 4,
                  "denoise": 1.0, **asd}}


def controls_by_name(webui, title: str, tab: str = "txt2img") -> dict:
    """A panel's controls by parameter name (its ``ui()`` returns them in its parameter set's order)."""
    script = webui.scripts[(tab, title)]
    return dict(zip(features.by_slug(feature_slug(title)).param_set.names(), script.controls))


def ui_args(webui, values: dict, tab: str = "txt2img") -> dict:
    """``values`` in each panel's argument slots, the rest at the controls' defaults (the UI's path)."""
    return {title: [named.get(name, control.value) for name, control in controls_by_name(webui, title, tab).items()]
            for title, named in values.items()}


def api_scripts(values: dict, encode) -> dict:
    """``values`` as the API's ``alwayson_scripts`` (named form), images as base64 by ``encode``."""
    out = {}
    for title, named in values.items():
        named = dict(named)
        if "images" in named:
            named["images"] = [encode(im) for im in named["images"]]
        out[title] = {"args": [named]}
    return out


def unet_calls(run):
    """The result of ``run()`` and, for each U-Net call: its input's size (H, W), its timestep and its context."""
    sizes, steps = [], []

    def record(module, args):
        sizes.append(tuple(args[0].shape[-2:]))
        steps.append(float(args[1][0]))

    handle = host.current().unet(shared.sd_model).register_forward_pre_hook(record)
    try:
        result, contexts = unet_contexts(run)
    finally:
        handle.remove()
    return result, list(zip(sizes, steps, contexts))


def expected_rows(alpha_positions: list) -> dict:
    """The rows a U-Net call's context can hold, by name: the host's encoding of the marker-free prompt ("text"), its
    fuse with the subjects at the nouns (the core's ``fuse``: "subjects") and the negative prompt ("uncond")."""
    encoder = prompt_encoder()
    path = fc.resolve_model("")[1]
    text = encoder([CLEAN])
    fused = fc.CACHE.get(path).fuse(text, fc.CACHE.subject_embeddings(path, IMAGES), [alpha_positions])
    return {"text": text[0], "subjects": fused[0], "uncond": encoder([NEGATIVE])[0]}


def row_kind(row: torch.Tensor, rows: dict) -> str:
    if bool(row[0].abs().eq(1024.0).all()):  # sd-webui-controlnet's mark before the tokens
        row = row[1:]
    return next((name for name, expected in rows.items() if torch.equal(row, expected)), "unknown")


def check_subjects_in_pass(calls, rows: dict, alpha: float = ALPHA) -> dict:
    """The U-Net calls of one sampling pass (``rows`` from :func:`expected_rows`): each holds whole tiles' rows, one
    cond and one uncond row a tile; the uncond rows untouched; the cond rows of the text alone before the pass's switch
    step and of the subjects from it on (the pass's steps told apart by their timesteps). Returns what it counted."""
    assert calls, "no call in this pass"
    timesteps = list(dict.fromkeys(t for _size, t, _c in calls))
    switch = delayed_switch_step(alpha, len(timesteps))
    assert 0 < switch < len(timesteps)
    tiles_per_step: dict = {}
    for _size, t, context in calls:
        kinds = [row_kind(row, rows) for row in context]
        assert kinds.count("uncond") * 2 == len(kinds), kinds
        step = timesteps.index(t)
        assert set(kinds) == {"uncond", "subjects" if step >= switch else "text"}, (step, switch, kinds)
        tiles_per_step[step] = tiles_per_step.get(step, 0) + kinds.count("uncond")
    return {"steps": len(timesteps), "switch": switch, "tile_calls": len(calls), "tiles_per_step": tiles_per_step,
            "sizes": sorted({size for size, _t, _c in calls})}


def check_infotext_round_trip(webui, infotext: str, values: dict, tab: str = "txt2img") -> None:
    """Each panel's infotext key is there and pastes its values back into its controls (images never: their hashes)."""
    params = infotext_utils.parse_generation_parameters(infotext)
    for title, named in values.items():
        script = webui.scripts[(tab, title)]
        assert script.paste_field_names[0] in params, (title, infotext)
        pasted = {component.elem_id: fn(params) for component, fn in script.infotext_fields}
        controls = controls_by_name(webui, title, tab)
        for name, value in named.items():
            if name != "images":
                assert pasted[controls[name].elem_id] == value, (title, name, pasted[controls[name].elem_id], value)


# -- the scenarios, run by each leg's tests -------------------------------------------------------------------------

def generate(webui, values: dict, extra: dict | None = None):
    """txt2img with the three panels' ``values`` (and other scripts' ``extra`` args) through the UI's path: the result
    and the U-Net calls (:func:`unet_calls`)."""
    args = {**ui_args(webui, values), **(extra or {})}
    return unet_calls(lambda: webui.txt2img(args, prompt=PROMPT, negative_prompt=NEGATIVE, steps=4))


def has_all_keys(infotext: str, width: int, height: int) -> bool:
    return all(key.format(width=width, height=height) in infotext for key in KEYS)


def check_tiled_pass(calls) -> dict:
    """The subjects in every U-Net call of the hires pass (every call not of the first call's size), every tile in every
    step; returns the counts."""
    rows = expected_rows(noun_positions(CLEAN, ["man", "woman"]))
    tiled = check_subjects_in_pass([c for c in calls if c[0] != calls[0][0]], rows)
    assert tiled["steps"] == 4 and tiled["switch"] == 2
    assert all(n >= 4 for n in tiled["tiles_per_step"].values()), tiled  # 2×2 or 3×2 tiles, more on the covering step
    return tiled


def check_ui_generation(webui, width: int, height: int, tile: int) -> None:
    """The exact size, the subjects in the first pass (text alone before its switch) and in every tile of the hires
    pass, and an infotext that pastes all three panels back."""
    values = settings(width, height, tile)
    res, calls = generate(webui, values)
    assert res.images[0].size == (width, height)
    first_pass = [c for c in calls if c[0] == calls[0][0]]
    assert check_subjects_in_pass(first_pass, expected_rows(noun_positions(CLEAN, ["man", "woman"])))["tile_calls"] == 4
    check_tiled_pass(calls)
    assert has_all_keys(res.infotexts[0], width, height)
    check_infotext_round_trip(webui, res.infotexts[0], values)


def check_api_generation(webui):
    """The three in one API request to 301×173 (named form, base64 images): the size, the infotext of all three that
    pastes back. Returns the answer to the same request with one marker too few (the leg checks its host's 422)."""
    client = webui.api_client()
    values = settings(301, 173, 128)
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": 4, "seed": 3,
                                               "alwayson_scripts": api_scripts(values, b64_png)})
    assert r.status_code == 200, r.text[-500:]
    assert image_from_b64(r.json()["images"][0]).size == (301, 173)
    info = infotexts_of(r.json())[0]
    assert has_all_keys(info, 301, 173) and "alpha=0.5 subjects=2" in info
    check_infotext_round_trip(webui, info, values)
    return client.post("/sdapi/v1/txt2img", json={"prompt": "a man img", "steps": 2, "alwayson_scripts": api_scripts(values, b64_png)})


def check_failure_and_interrupt(webui, bare, unet) -> None:
    """A U-Net failure and an interrupt in the tiled pass (call 12: the first pass makes 4), then the host's own image."""
    values = settings(301, 173, 128)
    with unet_fails_at_call(unet, 12), pytest.raises(RuntimeError, match="simulated"):
        generate(webui, values)
    with unet_interrupts_at_call(unet, 12):
        generate(webui, values)
    assert same_images(bare.txt2img(prompt=CLEAN, steps=2), webui.txt2img(prompt=CLEAN, steps=2))


def check_beside_controlnet(webui, unit: dict):
    """The three at 301×173 with a ControlNet unit of the host's ControlNet stand-in: the size, the subjects in every
    tile, all three keys, and the control acting. Returns the U-Net calls."""
    res, calls = generate(webui, settings(301, 173, 128), {"ControlNet": [unit]})
    assert res.images[0].size == (301, 173) and has_all_keys(res.infotexts[0], 301, 173)
    check_tiled_pass(calls)
    without, _ = generate(webui, settings(301, 173, 128), {"ControlNet": [None]})
    assert not same_images(res, without), "the control must act"
    return calls
