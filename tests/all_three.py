"""The three features in one generation, as a user makes a large personalised picture: FastComposer's subjects in the
first pass and (by default) the hires pass, FreeU, and Any-Size Diffusion's hires pass to an exact size. Shared by the
A1111 leg (tests/fastcomposer_webui/test_all_three.py) and the Forge leg (tests/forge/test_forge_all_three.py): the
settings, and the checks that the subjects reach every tile and that the infotext pastes all three back."""

from __future__ import annotations

import torch

from harness import make_image, prompt_encoder, unet_contexts
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
