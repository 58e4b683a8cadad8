"""FastComposer through the WebUI path: UI args in, images and infotext out; which conditioning tokens
change, when (delayed switch, Euler/Heun, hires, img2img), long/emphasised prompts, embeddings, batch."""

import pytest
import torch

from harness import augmented_steps, changed_tokens, make_image, noun_positions, same_images, unet_contexts, unet_fails_at_call
from lib_freediff.fastcomposer.conditioning import delayed_switch_step
from lib_freediff.webui import fastcomposer as fc
from lib_freediff.webui import runtime
from modules import infotext_utils, shared
from modules.sd_hijack_clip import Embedding, EmbeddingDatabase

from .conftest import controlnet_marking

FC = "FastComposer"
PROMPT = "a man img and a woman img at the beach"
CLEAN = "a man and a woman at the beach"
IMAGES = [make_image(48, 64, seed=11), make_image(64, 40, seed=12)]


def fc_args(images=IMAGES, alpha=0.7, hires=True, enabled=True, model=""):
    return {FC: [enabled, model, list(images), alpha, hires]}


def test_disabled_is_bit_identical_to_no_extension(webui, bare):
    for kwargs in ({}, {"batch_size": 2, "sampler_name": "Heun"}, {"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2}):
        assert same_images(bare.txt2img(prompt=PROMPT, **kwargs), webui.txt2img(fc_args(enabled=False), prompt=PROMPT, **kwargs))
    assert same_images(bare.img2img(prompt=PROMPT), webui.img2img(fc_args(enabled=False), prompt=PROMPT))
    assert "FastComposer" not in webui.txt2img(fc_args(enabled=False), prompt=PROMPT).infotexts[0]


def test_alpha_zero_is_bit_identical_to_the_marker_free_prompt(webui, bare):
    for kwargs in ({}, {"sampler_name": "Heun", "batch_size": 2}, {"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2}):
        assert same_images(bare.txt2img(prompt=CLEAN, **kwargs), webui.txt2img(fc_args(alpha=0.0), prompt=PROMPT, **kwargs))
    # with subjects it differs
    assert not same_images(bare.txt2img(prompt=CLEAN), webui.txt2img(fc_args(alpha=1.0), prompt=PROMPT))


def test_only_the_marked_positions_of_the_cond_change(webui):
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), prompt=PROMPT, steps=3, negative_prompt="blurry img"))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0), prompt=PROMPT, steps=3, negative_prompt="blurry img"))
    assert noun_positions(CLEAN, ["man", "woman"]) == [2, 5]
    # each call: [cond row, uncond row]; only the cond row's noun tokens change, the negative branch never
    assert changed_tokens(aug, plain) == [[(0, 2), (0, 5)]] * 3


def test_fused_values_are_the_postfuse_of_text_and_subject(webui):
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), prompt=PROMPT, steps=1))
    text = shared.sd_model.cond_stage_model([CLEAN])
    model = fc.CACHE.get(fc.resolve_model("")[1])
    subjects = fc.CACHE.subject_embeddings(fc.resolve_model("")[1], IMAGES)
    expected = model.postfuse_module(text[0, [2, 5]], subjects)
    torch.testing.assert_close(aug[0][0, [2, 5]], expected)
    torch.testing.assert_close(aug[0][0, [0, 1, 3, 4, 6]], text[0, [0, 1, 3, 4, 6]], rtol=0, atol=0)


@pytest.mark.parametrize("sampler,calls_per_step", [("Euler", 1), ("Heun", 2)])
@pytest.mark.parametrize("alpha,steps", [(0.7, 10), (0.75, 8)])
def test_switch_happens_at_the_documented_sampler_step(webui, sampler, calls_per_step, alpha, steps):
    switch = delayed_switch_step(alpha, steps)
    assert switch == {(0.7, 10): 3, (0.75, 8): 2}[(alpha, steps)]  # floor((1 - alpha) * steps)
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=alpha), prompt=PROMPT, steps=steps, sampler_name=sampler))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0), prompt=PROMPT, steps=steps, sampler_name=sampler))
    augmented, step_of_call = augmented_steps(aug, plain, steps, calls_per_step)
    assert augmented == [s for s in step_of_call if s >= switch]


@pytest.mark.parametrize("hires", [True, False])
def test_hires_pass_uses_subjects_as_configured(webui, hires):
    kwargs = dict(prompt=PROMPT, steps=4, enable_hr=True, hr_scale=2, hr_second_pass_steps=4, denoising_strength=1.0)
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.5, hires=hires), **kwargs))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0, hires=hires), **kwargs))
    on = [not torch.equal(a, b) for a, b in zip(aug, plain)]
    assert on[:4] == [False, False, True, True]
    # the hires pass counts its own steps with the same alpha
    assert on[4:] == ([False, False, True, True] if hires else [False] * 4)


def test_img2img_counts_the_steps_it_runs(webui):
    # strength 0.6 of 10 steps: the sampler runs int(0.6 * 10) + 1 = 7 steps → switch at floor(0.3 * 7) = 2
    kwargs = dict(prompt=PROMPT, steps=10, denoising_strength=0.6)
    res, aug = unet_contexts(lambda: webui.img2img(fc_args(alpha=0.7), **kwargs))
    _, plain = unet_contexts(lambda: webui.img2img(fc_args(alpha=0.0), **kwargs))
    assert [not torch.equal(a, b) for a, b in zip(aug, plain)] == [False, False] + [True] * 5
    assert "FastComposer: " in res.infotexts[0]


@pytest.mark.parametrize("kwargs", [
    {"prompt": PROMPT, "negative_prompt": "blurry, lowres"},
    {"prompt": PROMPT, "sampler_name": "Heun", "batch_size": 2},
    {"prompt": PROMPT, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2},
    {"prompt": "a (man img:1.2) standing, " + ", ".join(["red brick wall"] * 22) + ", and (a woman img:1.3) at the beach"},
])
def test_beside_controlnet_marked_conds(webui, bare, kwargs):
    """sd-webui-controlnet prepends a ±1024 token to every cond: the marked nouns are fused as without it."""
    clean = kwargs["prompt"].replace(" img", "")
    kwargs = {"steps": 3, **kwargs}
    unet = shared.sd_model.model.diffusion_model
    plain, plain_ctx = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), **kwargs))
    with controlnet_marking(unet) as seen:
        marked, marked_ctx = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), **kwargs))
    assert seen and all(c.shape[1] % 77 == 1 and bool(c[:, 0].abs().eq(1024).all()) for c in seen)
    assert len(marked_ctx) == len(plain_ctx) and all(torch.equal(a, b) for a, b in zip(marked_ctx, plain_ctx))
    assert same_images(plain, marked)
    # alpha 0 under the same marking: the WebUI's own image for the prompt without markers
    with controlnet_marking(unet):
        assert same_images(bare.txt2img(**{**kwargs, "prompt": clean}), webui.txt2img(fc_args(alpha=0.0), **kwargs))


def test_long_emphasised_prompt_over_two_chunks(webui, bare):
    filler = ", ".join(["red brick wall"] * 22)
    prompt = f"a (man img:1.2) standing, {filler}, and (a woman img:1.3) at the beach"
    clean = f"a (man:1.2) standing, {filler}, and (a woman:1.3) at the beach"
    expected = noun_positions(clean, ["man", "woman"])
    assert expected[1] >= 77  # the woman is in the second chunk
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), prompt=prompt, steps=2))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0), prompt=prompt, steps=2))
    assert aug[0].shape[1] == 154
    # a 154-token cond and a 77-token uncond go to the U-Net in separate calls: cond, uncond per step
    assert changed_tokens(aug, plain) == [[(0, expected[0]), (0, expected[1])], []] * 2
    assert same_images(bare.txt2img(prompt=clean, steps=2), webui.txt2img(fc_args(alpha=0.0), prompt=prompt, steps=2))


def test_break_and_comma_backtrack_follow_the_webui(webui):
    filler = " ".join(["stone"] * 66)
    prompt = f"a man img BREAK {filler}, tall green tree, a woman img in a long red dress"
    clean = f"a man BREAK {filler}, tall green tree, a woman in a long red dress"
    expected = noun_positions(clean, ["man", "woman"])
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), prompt=prompt, steps=1))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0), prompt=prompt, steps=1))
    assert changed_tokens(aug, plain)[0] == [(0, expected[0]), (0, expected[1])]
    # BREAK ends chunk 1; chunk 2 fills up at "long" and the comma backtrack moves "a woman in a" on
    assert expected == [2, 2 * 77 + 1 + 1]


def test_textual_inversion_embedding_as_the_marked_word(webui):
    clip = shared.sd_model.cond_stage_model
    saved = clip.hijack.embedding_db
    clip.hijack.embedding_db = EmbeddingDatabase()
    try:
        clip.hijack.embedding_db.register_embedding(Embedding(torch.randn(3, 32), "zqxperson", shorthash="abc"), clip)
        prompt = "a photo of zqxperson img and a woman img at home"
        _, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), prompt=prompt, steps=1))
        _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0), prompt=prompt, steps=1))
        # bos, a, photo, of, 3 embedding vectors (the last one is fused), and, a, woman
        assert changed_tokens(aug, plain)[0] == [(0, 6), (0, 9)]
    finally:
        clip.hijack.embedding_db = saved


def test_batch_count_and_per_image_prompts(webui):
    res, aug = unet_contexts(lambda: webui.txt2img(fc_args(alpha=1.0), prompt=PROMPT, steps=2, batch_size=2, n_iter=2))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(alpha=0.0), prompt=PROMPT, steps=2, batch_size=2, n_iter=2))
    assert len(res.images) == 4 and all("FastComposer: " in t for t in res.infotexts)
    assert changed_tokens(aug, plain) == [[(0, 2), (0, 5), (1, 2), (1, 5)]] * 4
    # a different prompt per image: each row gets its own positions
    prompts = ["a man img at home", "a cat and a big dog img"]
    _, aug = unet_contexts(lambda: webui.txt2img(fc_args(images=IMAGES[:1], alpha=1.0), prompt=prompts, steps=1, batch_size=2))
    _, plain = unet_contexts(lambda: webui.txt2img(fc_args(images=IMAGES[:1], alpha=0.0), prompt=prompts, steps=1, batch_size=2))
    assert changed_tokens(aug, plain) == [[(0, 2), (1, 6)]]


def test_infotext_round_trip_through_paste_fields(webui):
    res = webui.txt2img(fc_args(alpha=0.8, hires=False), prompt=PROMPT, steps=3)
    info = res.infotexts[0]
    params = infotext_utils.parse_generation_parameters(info)
    value = params["FastComposer"]
    digest = fc.model_hash(fc.resolve_model("")[1])
    hashes = "+".join(fc.image_hash(im) for im in IMAGES)
    assert value == f"model=fastcomposer.safetensors alpha=0.8 hires=false subjects=2 model_hash={digest} image_hashes={hashes}"
    assert len(info) < 400  # hashes, never the images
    assert params["Prompt"] == PROMPT  # the markers stay in the prompt
    script = webui.scripts[("txt2img", FC)]
    pasted = {component.elem_id: fn(params) for component, fn in script.infotext_fields}
    enabled, model, images_state, alpha, hires = script.controls
    assert [pasted[c.elem_id] for c in (enabled, model, alpha, hires)] == [True, "fastcomposer.safetensors", 0.8, False]
    assert images_state.elem_id not in pasted  # images are not in the infotext; the slots keep theirs
    again = webui.txt2img({FC: [True, "fastcomposer.safetensors", IMAGES, 0.8, False]}, prompt=PROMPT, steps=3)
    assert same_images(res, again)
    # an infotext without the key turns the panel off
    assert {fn({"Steps": "3"}) for _c, fn in script.infotext_fields} == {False, None}


def test_model_loaded_once_embeddings_cached_by_content_and_freed(webui, monkeypatch):
    from lib_freediff.fastcomposer import model as fc_model

    fc.free_memory()
    calls = []
    original = fc_model.FastComposerModel.encode_subjects
    monkeypatch.setattr(fc_model.FastComposerModel, "encode_subjects", lambda self, px: calls.append(px.shape[0]) or original(self, px))
    webui.txt2img(fc_args(), prompt=PROMPT, steps=1)
    loaded = fc.CACHE.model
    assert loaded is not None and calls == [2]
    copies = [im.copy() for im in IMAGES]  # other objects, same content
    webui.txt2img(fc_args(images=copies[::-1]), prompt=PROMPT, steps=1)
    assert fc.CACHE.model is loaded and calls == [2]
    assert all(p.device.type == "cpu" for p in loaded.parameters())  # on the compute device only while encoding
    assert "Freed" in fc.free_memory() and fc.CACHE.model is None
    webui.txt2img(fc_args(), prompt=PROMPT, steps=1)
    assert fc.CACHE.model is not None and fc.CACHE.model is not loaded and calls == [2, 2]


def test_not_a_fastcomposer_unet_is_said_in_the_generation(webui, capsys):
    webui.txt2img(fc_args(), prompt=PROMPT, steps=1)
    assert "is not FastComposer's U-Net" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs,per_script,message", [
    ({"prompt": "a man img at the beach"}, fc_args(), "parameter 'images': the prompt marks 1 subject(s)"),
    ({"prompt": PROMPT}, fc_args(images=[]), "parameter 'images': give 1 to 4"),
    ({"prompt": PROMPT}, fc_args(images=[make_image()] * 5), "parameter 'images': at most 4"),
    ({"prompt": "a man img img"}, fc_args(images=IMAGES[:1]), "parameter 'prompt'"),
    ({"prompt": PROMPT}, fc_args(model="nope.bin"), "parameter 'model': 'nope.bin' is not a model"),
    ({"prompt": PROMPT}, fc_args(alpha=1.5), "parameter 'alpha'"),
    ({"prompt": PROMPT}, fc_args(hires="maybe"), "parameter 'hires'"),
])
def test_bad_input_refuses_the_generation_and_breaks_nothing(webui, bare, kwargs, per_script, message):
    with pytest.raises(Exception) as raised:
        webui.txt2img(per_script, steps=2, **kwargs)
    assert message in str(raised.value)
    assert not runtime._sessions
    assert same_images(bare.txt2img(prompt=PROMPT, steps=2), webui.txt2img(prompt=PROMPT, steps=2))


def test_a_broken_model_file_is_named(webui, model_files, tmp_path):
    import os

    broken = os.path.join(model_files, "zz-broken.safetensors")
    with open(broken, "wb") as f:
        f.write(b"\x00not a safetensors file" * 10)
    try:
        with pytest.raises(Exception, match=r"parameter 'model': .*zz-broken\.safetensors"):
            webui.txt2img(fc_args(model="zz-broken.safetensors"), prompt=PROMPT, steps=1)
    finally:
        os.remove(broken)


def test_sdxl_and_sd2_are_refused_with_a_clear_message(webui):
    from tiny_sd import TinySD

    for family in ("sdxl", "sd2"):
        shared.sd_model = TinySD(family, context_dim=64)
        with pytest.raises(Exception, match="needs an SD1.5 model"):
            webui.txt2img(fc_args(), prompt=PROMPT, steps=1)
        assert "SD1.5" in fc.model_status("")
        assert not runtime._sessions


def test_a_failure_while_encoding_subjects_refuses_the_generation(webui, bare, monkeypatch):
    from lib_freediff.fastcomposer import model as fc_model

    def oom(self, pixels):
        raise RuntimeError("CUDA out of memory (simulated)")

    fc.free_memory()
    monkeypatch.setattr(fc_model.FastComposerModel, "encode_subjects", oom)
    with pytest.raises(Exception, match="could not prepare the subjects: RuntimeError: CUDA out of memory"):
        webui.txt2img(fc_args(), prompt=PROMPT, steps=1)
    assert not runtime._sessions
    monkeypatch.undo()
    assert same_images(bare.txt2img(prompt=CLEAN, steps=2), webui.txt2img(fc_args(alpha=0.0), prompt=PROMPT, steps=2))


def test_no_hook_left_after_a_generation_that_raised(webui, bare, sd1):
    with unet_fails_at_call(sd1.model.diffusion_model, 2), pytest.raises(RuntimeError, match="simulated"):
        webui.txt2img(fc_args(alpha=1.0), prompt=PROMPT, steps=4)
    assert not runtime._sessions
    assert same_images(bare.txt2img(prompt=PROMPT, steps=2), webui.txt2img(prompt=PROMPT, steps=2))
