"""FastComposer on Forge (its stand-in): prompts through Forge's text processing engine (no ``cond_stage_model``), the
subjects fused into the conditioning the CFG callback hands Forge's sampling function; the same images, positions,
switch step, infotext and refusals as on AUTOMATIC1111, and nothing left on the model afterwards."""

import pytest
import torch

from backend.text_processing.textual_inversion import Embedding
from forge_sd import ForgeTinySD
from harness import (augmented_steps, b64_png, changed_tokens, infotexts_of, make_image, noun_positions, same_images,
                     unet_contexts, unet_fails_at_call, unet_interrupts_at_call)
from lib_freediff.fastcomposer.conditioning import delayed_switch_step
from lib_freediff.webui import fastcomposer as fc
from lib_freediff.webui import host, runtime
from modules import infotext_utils, shared

FC = "FastComposer"
PROMPT = "a man img and a woman img at the beach"
CLEAN = "a man and a woman at the beach"
IMAGES = [make_image(48, 64, seed=11), make_image(64, 40, seed=12)]
HIRES = {"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2, "hr_additional_modules": ["Use same choices"], "hr_cfg": 7.0}


def fc_args(images=IMAGES, alpha=0.7, hires=True, enabled=True, model=""):
    return {FC: [enabled, model, list(images), alpha, hires]}


@pytest.fixture(scope="module")
def webui(fc_webui):
    return fc_webui


@pytest.fixture(scope="module")
def bare(fc_bare):
    return fc_bare


@pytest.fixture(autouse=True)
def model(forge_fc_sd1):
    shared.sd_model = forge_fc_sd1
    yield
    assert not runtime._sessions
    assert "get_learned_conditioning" not in vars(forge_fc_sd1), "the prompt wrapper stayed on the model"
    shared.sd_model = forge_fc_sd1


def test_forge_has_no_cond_stage_model_and_encodes_through_its_engine(forge_fc_sd1):
    assert forge_fc_sd1.cond_stage_model is None and forge_fc_sd1.text_processing_engine is not None
    assert not isinstance(forge_fc_sd1.text_processing_engine, torch.nn.Module)  # no module hooks on it


def test_disabled_is_bit_identical_to_no_extension(webui, bare):
    for kwargs in ({}, {"batch_size": 2, "sampler_name": "Heun"}, HIRES):
        assert same_images(bare.txt2img(prompt=PROMPT, **kwargs), webui.txt2img(fc_args(enabled=False), prompt=PROMPT, **kwargs))
    assert same_images(bare.img2img(prompt=PROMPT), webui.img2img(fc_args(enabled=False), prompt=PROMPT))


def test_alpha_zero_is_bit_identical_to_forge_with_the_marker_free_prompt(webui, bare):
    for kwargs in ({}, {"sampler_name": "Heun", "batch_size": 2}, HIRES):
        assert same_images(bare.txt2img(prompt=CLEAN, **kwargs), webui.txt2img(fc_args(alpha=0.0), prompt=PROMPT, **kwargs))
    assert same_images(bare.img2img(prompt=CLEAN), webui.img2img(fc_args(alpha=0.0), prompt=PROMPT))
    assert not same_images(bare.txt2img(prompt=CLEAN), webui.txt2img(fc_args(alpha=1.0), prompt=PROMPT))


def test_the_cond_is_the_core_fuse_of_forges_own_embedding(webui, forge_fc_sd1):
    """Every U-Net call's cond row is FastComposer's fuse (the core's) of the engine's encoding of the marker-free
    prompt at the nouns' positions; the uncond row is the engine's encoding of the negative prompt, untouched."""
    _, contexts = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), prompt=PROMPT, negative_prompt="blurry img", steps=2))
    engine = forge_fc_sd1.text_processing_engine
    path = fc.resolve_model("")[1]
    positions = noun_positions(CLEAN, ["man", "woman"])
    assert positions == [2, 5]
    expected = fc.CACHE.get(path).fuse(engine([CLEAN]), fc.CACHE.subject_embeddings(path, IMAGES), [positions])
    assert len(contexts) == 2
    for context in contexts:  # Forge's sampling function: [cond rows, uncond rows] in one call
        assert torch.equal(context[:1], expected)
        assert torch.equal(context[1:], engine(["blurry img"]))


def test_the_image_is_forges_own_sampled_from_the_core_fuse(webui, bare, forge_fc_sd1):
    """α = 1, same seed and settings: the image is the one Forge without the extension samples when the marker-free
    prompt's encoding, fused with the subjects by FastComposer's core, is its conditioning."""
    engine = forge_fc_sd1.text_processing_engine
    path = fc.resolve_model("")[1]
    fused = fc.CACHE.get(path).fuse(engine([CLEAN]), fc.CACHE.subject_embeddings(path, IMAGES), [[2, 5]])
    encode = forge_fc_sd1.get_learned_conditioning
    forge_fc_sd1.get_learned_conditioning = lambda texts: fused if list(texts) == [CLEAN] else encode(texts)
    try:
        expected = bare.txt2img(prompt=CLEAN, steps=3)
    finally:
        del forge_fc_sd1.get_learned_conditioning
    assert same_images(expected, webui.txt2img(fc_args(alpha=1.0), prompt=PROMPT, steps=3))
    assert not same_images(expected, bare.txt2img(prompt=CLEAN, steps=3))


@pytest.mark.parametrize("sampler,calls_per_step", [("Euler", 1), ("Heun", 2)])
def test_switch_happens_at_the_same_step_as_on_a1111(webui, sampler, calls_per_step):
    alpha, steps = 0.7, 10
    switch = delayed_switch_step(alpha, steps)
    assert switch == 3
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=alpha), prompt=PROMPT, steps=steps, sampler_name=sampler))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0), prompt=PROMPT, steps=steps, sampler_name=sampler))
    augmented, step_of_call = augmented_steps(aug, plain, steps, calls_per_step)
    assert augmented == [s for s in step_of_call if s >= switch]
    assert all(changed == [(0, 2), (0, 5)] for changed in changed_tokens(aug, plain) if changed)  # the uncond row: never


@pytest.mark.parametrize("hires", [True, False])
def test_hires_pass_uses_subjects_as_configured(webui, hires):
    kwargs = dict(prompt=PROMPT, steps=4, **{**HIRES, "hr_second_pass_steps": 4}, denoising_strength=1.0)
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.5, hires=hires), **kwargs))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0, hires=hires), **kwargs))
    on = [not torch.equal(a, b) for a, b in zip(aug, plain)]
    assert on == [False, False, True, True] + ([False, False, True, True] if hires else [False] * 4)


def test_img2img_counts_the_steps_it_runs(webui):
    kwargs = dict(prompt=PROMPT, steps=10, denoising_strength=0.6)
    _, aug = unet_contexts(lambda: webui.img2img(fc_args(alpha=0.7), **kwargs))
    _, plain = unet_contexts(lambda: webui.img2img(fc_args(alpha=0.0), **kwargs))
    assert [not torch.equal(a, b) for a, b in zip(aug, plain)] == [False, False] + [True] * 5


def test_long_emphasised_prompt_over_two_chunks(webui, bare):
    filler = ", ".join(["red brick wall"] * 22)
    prompt = f"a (man img:1.2) standing, {filler}, and (a woman img:1.3) at the beach"
    clean = f"a (man:1.2) standing, {filler}, and (a woman:1.3) at the beach"
    expected = noun_positions(clean, ["man", "woman"])
    assert expected[1] >= 77
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), prompt=prompt, steps=2))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0), prompt=prompt, steps=2))
    assert aug[0].shape[1] == 154  # Forge batches the 77-token uncond beside it, repeated to 154 tokens
    assert changed_tokens(aug, plain) == [[(0, expected[0]), (0, expected[1])]] * 2
    assert same_images(bare.txt2img(prompt=clean, steps=2), webui.txt2img(fc_args(alpha=0.0), prompt=prompt, steps=2))


def test_break_and_forges_fixed_word_wrap(webui, monkeypatch):
    """Forge's engine wraps at a comma 20 tokens back whatever the option says: the layout follows the engine."""
    monkeypatch.setattr(shared.opts, "comma_padding_backtrack", 0, raising=False)
    filler = " ".join(["stone"] * 66)
    prompt = f"a man img BREAK {filler}, tall green tree, a woman img in a long red dress"
    clean = f"a man BREAK {filler}, tall green tree, a woman in a long red dress"
    expected = noun_positions(clean, ["man", "woman"])
    assert expected == [2, 2 * 77 + 1 + 1]  # "a woman in a" moved on to the third chunk by the wrap
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), prompt=prompt, steps=1))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0), prompt=prompt, steps=1))
    assert changed_tokens(aug, plain)[0] == [(0, expected[0]), (0, expected[1])]


def test_emphasis_mode_none_reads_brackets_literally(webui, monkeypatch):
    monkeypatch.setattr(shared.opts, "emphasis", "None", raising=False)
    prompt, clean = "a (man img) and a woman img", "a (man) and a woman"
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), prompt=prompt, steps=1))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0), prompt=prompt, steps=1))
    expected = noun_positions(clean, ["man", "woman"])  # the engine reads the mode at each encode: now "None"
    assert expected == [3, 7]  # bos a ( man ) and a woman: the brackets are tokens
    assert changed_tokens(aug, plain)[0] == [(0, 3), (0, 7)]


def test_textual_inversion_embedding_of_forges_database(webui, forge_fc_sd1, monkeypatch):
    db = forge_fc_sd1.text_processing_engine.embeddings
    monkeypatch.setattr(db, "ids_lookup", {})
    monkeypatch.setattr(db, "word_embeddings", {})
    embedding = Embedding(torch.randn(3, 32), "zqxperson")
    embedding.vectors = 3  # Forge sets it when it loads the file
    db.register_embedding(embedding)
    prompt = "a photo of zqxperson img and a woman img at home"
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), prompt=prompt, steps=1))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0), prompt=prompt, steps=1))
    assert changed_tokens(aug, plain)[0] == [(0, 6), (0, 9)]  # bos a photo of, 3 vectors (the last fused), and a woman


def test_infotext_round_trip_through_paste_fields(webui):
    res = webui.txt2img(fc_args(alpha=0.8, hires=False), prompt=PROMPT, steps=3)
    params = infotext_utils.parse_generation_parameters(res.infotexts[0])
    hashes = "+".join(fc.image_hash(im) for im in IMAGES)
    assert params[FC] == (f"model=fastcomposer.safetensors alpha=0.8 hires=false subjects=2 "
                          f"model_hash={fc.model_hash(fc.resolve_model('')[1])} image_hashes={hashes}")
    assert params["Prompt"] == PROMPT
    script = webui.scripts[("txt2img", FC)]
    pasted = {component.elem_id: fn(params) for component, fn in script.infotext_fields}
    enabled, model, _images, alpha, hires = script.controls
    assert [pasted[c.elem_id] for c in (enabled, model, alpha, hires)] == [True, "fastcomposer.safetensors", 0.8, False]
    assert same_images(res, webui.txt2img({FC: [True, "fastcomposer.safetensors", IMAGES, 0.8, False]}, prompt=PROMPT, steps=3))


def test_model_loaded_once_and_freed(webui):
    fc.free_memory()
    webui.txt2img(fc_args(), prompt=PROMPT, steps=1)
    loaded = fc.CACHE.model
    webui.txt2img(fc_args(), prompt=PROMPT, steps=1)
    assert loaded is not None and fc.CACHE.model is loaded
    assert "Freed" in fc.free_memory() and fc.CACHE.model is None


def test_failed_and_interrupted_generations_leave_nothing(webui, bare, forge_fc_sd1):
    plain = bare.txt2img(prompt=PROMPT, steps=3)
    unet = host.current().unet(forge_fc_sd1)
    with unet_fails_at_call(unet, 2), pytest.raises(RuntimeError, match="simulated"):
        webui.txt2img(fc_args(alpha=1.0), prompt=PROMPT, steps=3)
    with unet_interrupts_at_call(unet, 2):
        webui.txt2img(fc_args(alpha=1.0), prompt=PROMPT, steps=3)
    assert "get_learned_conditioning" not in vars(forge_fc_sd1)
    assert same_images(plain, webui.txt2img(prompt=PROMPT, steps=3))


def test_another_extensions_wrapper_is_kept_and_called(webui, forge_fc_sd1):
    """An extension that wrapped ``get_learned_conditioning`` on the model before: ours calls it, and it is put back."""
    seen = []
    original = forge_fc_sd1.get_learned_conditioning

    def theirs(prompt):
        seen.append(list(prompt))
        return original(prompt)

    forge_fc_sd1.get_learned_conditioning = theirs
    try:
        webui.txt2img(fc_args(), prompt=PROMPT, steps=1)
        assert [CLEAN] in seen and vars(forge_fc_sd1)["get_learned_conditioning"] is theirs
    finally:
        del forge_fc_sd1.get_learned_conditioning


def post(client, args, **extra):
    payload = {"prompt": PROMPT, "steps": 2, "width": 64, "height": 64, "seed": 5, **extra,
               "alwayson_scripts": {FC: {"args": args}}}
    return client.post("/sdapi/v1/txt2img", json=payload)


def test_api_named_positional_and_refusals(webui, forge_fc_sd1, monkeypatch):
    client = webui.api_client()
    images = [b64_png(im) for im in IMAGES]
    named = post(client, [{"enabled": True, "images": images, "alpha": 0.6}])
    positional = post(client, [True, "fastcomposer.safetensors", images, 0.6, True])
    assert named.status_code == 200 and positional.status_code == 200, named.text[-300:]
    assert "FastComposer: model=fastcomposer.safetensors alpha=0.6 subjects=2" in infotexts_of(named.json())[0]
    assert named.json()["images"] == positional.json()["images"]
    # Forge answers a refusal with FastAPI's own handler: {"detail": message}, the feature and the field named in it
    wrong_count = post(client, [{"enabled": True, "images": images[:1]}])
    assert wrong_count.status_code == 422
    assert wrong_count.json()["detail"].startswith("FastComposer: parameter 'images': the prompt marks 2 subject(s)")
    for family in ("sdxl", "sd2"):
        monkeypatch.setattr(shared, "sd_model", ForgeTinySD(family, context_dim=64))
        r = post(client, [{"enabled": True, "images": images}])
        assert r.status_code == 422 and r.json()["detail"].startswith(
            "FastComposer: parameter 'model': FastComposer's model needs an SD1.5 model loaded"), r.text[-300:]
    monkeypatch.setattr(shared, "sd_model", ForgeTinySD("sd1", context_dim=64))  # prompts by word hashes: no engine
    r = post(client, [{"enabled": True, "images": images}])
    assert r.status_code == 422 and "needs Forge's CLIP text processing" in r.json()["detail"]
    monkeypatch.undo()
    shared.sd_model = forge_fc_sd1
    assert not runtime._sessions and post(client, [{"enabled": True, "images": images}]).status_code == 200
    presets = client.get("/freediff/v1/presets/fastcomposer").json()["presets"]
    assert {p["name"] for p in presets} >= {"Balanced (alpha 0.7)", "Identity (alpha 0.8)", "Editable (alpha 0.6)"}
