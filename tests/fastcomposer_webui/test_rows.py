"""The session's pieces the stand-in's pipeline does not reach: the real WebUI's conditioning structures
(AND parts, prompt editing), negative texts, the cond cache, subject counting with the WebUI's parser."""

import types
from collections import namedtuple

import pytest
import torch

import modules
from harness import make_image
from lib_freediff.errors import ParamError
from lib_freediff.webui import fastcomposer as fc
from lib_freediff.webui import host
from modules import shared
from modules.prompt_parser import SdConditioning
from modules.script_callbacks import CFGDenoiserParams

from .conftest import controlnet_mark

# the WebUI's prompt_parser structures (field names as in v1.10.1)
ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules = schedules
        self.weight = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape
        self.batch = batch


def reconstruct_multicond_batch(c, step):
    """What the WebUI's CFG denoiser stacks: per image, per AND part, the entry active at ``step``."""
    rows = []
    for parts in c.batch:
        for part in parts:
            entry = next((e for e in part.schedules if step <= e.end_at_step), part.schedules[0])
            rows.append(entry.cond)
    return torch.stack(rows)


@pytest.fixture
def session(model_files):
    path = fc.resolve_model("")[1]
    model = fc.CACHE.get(path)
    subjects = fc.CACHE.subject_embeddings(path, [make_image(seed=1), make_image(seed=2), make_image(seed=3)])
    p = types.SimpleNamespace()
    s = fc.FastComposerSession(p, {"alpha": 0.7, "hires": True, "model": "fastcomposer.safetensors"}, model, subjects,
                               host.current().fastcomposer_text(shared.sd_model))
    yield s
    s.close()


def denoiser_at(call, cond, steps=10):
    return types.SimpleNamespace(step=call, steps=steps, total_steps=steps, p=None,
                                 sampler=types.SimpleNamespace(sampler_extra_args={"cond": cond}))


def and_parts_with_prompt_editing():
    """The conds of two images, as the WebUI encodes them while the session's hooks are attached, and the
    prompt-editing part's two variants."""
    clip = shared.sd_model.cond_stage_model
    # image 0: "a man img AND a tall [boy:woman:4] img"  (WebUI: one encode per AND part, texts = its variants)
    part_a = clip(SdConditioning(["a man img"]))
    part_b = clip(SdConditioning(["a tall boy img", "a tall woman img"]))
    # image 1: "a cat AND a dog img" — a part without markers shifts nothing
    part_c = clip(SdConditioning(["a cat"]))
    part_d = clip(SdConditioning(["a dog img"]))
    cond = MulticondLearnedConditioning((2,), [
        [ComposableScheduledPromptConditioning([ScheduledPromptConditioning(10, part_a[0])]),
         ComposableScheduledPromptConditioning([ScheduledPromptConditioning(4, part_b[0]), ScheduledPromptConditioning(10, part_b[1])])],
        [ComposableScheduledPromptConditioning([ScheduledPromptConditioning(10, part_c[0])]),
         ComposableScheduledPromptConditioning([ScheduledPromptConditioning(10, part_d[0])])],
    ])
    return cond, part_a, part_b


def test_and_parts_and_prompt_editing_rows(session):
    clip = shared.sd_model.cond_stage_model
    cond, part_a, part_b = and_parts_with_prompt_editing()
    # the encoder saw the texts without markers
    assert torch.equal(part_a[0], clip(["a man"])[0]) and torch.equal(part_b[1], clip(["a tall woman"])[0])
    uncond = torch.randn(2, 77, 32)
    post = session.model.postfuse_module
    for call, variant in ((3, 0), (8, 1)):  # prompt editing: boy up to call 4, then woman
        text_cond = reconstruct_multicond_batch(cond, call)
        params = CFGDenoiserParams(None, None, None, 0, 10, text_cond, uncond, denoiser_at(call, cond))
        session.on_cfg_denoiser(params)
        out = params.text_cond
        assert params.text_uncond is uncond
        diff = [(r, t) for r, t in (out != text_cond).any(-1).nonzero().tolist()]
        assert diff == [(0, 2), (1, 3), (3, 2)]
        subj = session.subjects
        torch.testing.assert_close(out[0, 2], post(text_cond[0, 2], subj[0]))          # man: subject 1
        torch.testing.assert_close(out[1, 3], post(part_b[variant][3], subj[1]))     # boy/woman: subject 2 (after part 1's one)
        torch.testing.assert_close(out[3, 2], post(text_cond[3, 2], subj[0]))          # dog: subject 1 of image 1
    # before the switch step (floor(0.3 * 10) = 3) nothing changes
    text_cond = reconstruct_multicond_batch(cond, 2)
    params = CFGDenoiserParams(None, None, None, 0, 10, text_cond, uncond, denoiser_at(2, cond))
    session.on_cfg_denoiser(params)
    assert params.text_cond is text_cond


def marked_like_controlnet(c):
    """sd-webui-controlnet's marking of a positive MulticondLearnedConditioning: every schedule entry replaced by
    one whose cond is a new tensor with the +1024 mark token first."""
    for parts in c.batch:
        for part in parts:
            part.schedules = [ScheduledPromptConditioning(e.end_at_step, controlnet_mark(e.cond, True)) for e in part.schedules]
    return c


def test_controlnet_marked_rows_fuse_the_same_tokens(session):
    plain, _a, _b = and_parts_with_prompt_editing()
    marked = marked_like_controlnet(and_parts_with_prompt_editing()[0])
    for call in (3, 8):  # both prompt-editing variants
        expected = CFGDenoiserParams(None, None, None, 0, 10, reconstruct_multicond_batch(plain, call), None, denoiser_at(call, plain))
        session.on_cfg_denoiser(expected)
        text_cond = reconstruct_multicond_batch(marked, call)
        assert text_cond.shape[1] == 78
        params = CFGDenoiserParams(None, None, None, 0, 10, text_cond, None, denoiser_at(call, marked))
        session.on_cfg_denoiser(params)
        assert torch.equal(params.text_cond[:, 0], text_cond[:, 0])  # the mark stays
        assert torch.equal(params.text_cond[:, 1:], expected.text_cond)
        assert not torch.equal(expected.text_cond, reconstruct_multicond_batch(plain, call))


def test_identical_and_parts_take_consecutive_subjects(session):
    # "a man img AND a man img": the WebUI encodes the part once; the two rows take subjects 1 and 2
    clip = shared.sd_model.cond_stage_model
    part = clip(SdConditioning(["a man img"]))
    entry = ComposableScheduledPromptConditioning([ScheduledPromptConditioning(10, part[0])])
    cond = MulticondLearnedConditioning((1,), [[entry, entry]])
    text_cond = reconstruct_multicond_batch(cond, 5)
    params = CFGDenoiserParams(None, None, None, 0, 10, text_cond, None, denoiser_at(5, cond))
    session.on_cfg_denoiser(params)
    post = session.model.postfuse_module
    torch.testing.assert_close(params.text_cond[0, 2], post(part[0, 2], session.subjects[0]))
    torch.testing.assert_close(params.text_cond[1, 2], post(part[0, 2], session.subjects[1]))


def test_negative_texts_pass_untouched(session):
    clip = shared.sd_model.cond_stage_model
    negative = clip(SdConditioning(["ugly img, blurry"], is_negative_prompt=True))
    session.close()
    assert torch.equal(negative, clip(["ugly img, blurry"]))  # the marker stayed in the text
    assert not clip._forward_pre_hooks and not clip._forward_hooks


def test_unknown_rows_are_left_alone(session, capsys):
    cond = torch.randn(2, 77, 32)  # never went through the encoder hook
    params = CFGDenoiserParams(None, None, None, 0, 10, cond, None, denoiser_at(9, cond))
    session.on_cfg_denoiser(params)
    assert params.text_cond is cond
    mismatch = CFGDenoiserParams(None, None, None, 0, 10, torch.randn(3, 77, 32), None, denoiser_at(9, cond))
    session.on_cfg_denoiser(mismatch)
    assert "cannot match 3 conditioning rows" in capsys.readouterr().out


def test_webui_cond_cache_is_emptied_at_start_and_end():
    class Processing:
        cached_c = ["key", "cond"]
        cached_uc = ["ukey", "uncond"]

    class Txt2Img(Processing):
        cached_hr_c = ["hkey", "hcond"]

    p = Txt2Img()
    p.cached_c = Processing.cached_c  # the WebUI's __post_init__: the instance shares the class's list
    fc.clear_cond_caches(p)
    assert Processing.cached_c == [None, None] and Txt2Img.cached_hr_c == [None, None]
    assert Processing.cached_uc == ["ukey", "uncond"]  # the negative branch is never changed by FastComposer
    # Forge's caches hold a third entry (the text engine's infotext params): all of it goes
    Processing.cached_c = p.cached_c = ["key", "cond", {"Emphasis": "No norm"}]
    fc.clear_cond_caches(p)
    assert Processing.cached_c == [None, None, None]


@pytest.fixture
def prompt_parser(monkeypatch):
    """The two functions of the WebUI's prompt_parser that subject counting uses, for a few prompts."""
    schedules = {"a [man img:boy img:0.5] at the beach": [[5, "a man img at the beach"], [10, "a boy img at the beach"]],
                 "a [man img:dog:0.5]": [[5, "a man img"], [10, "a dog"]]}

    def get_multicond_prompt_list(prompts):
        parts = [t.strip() for t in prompts[0].split(" AND ")]
        flat = list(dict.fromkeys(parts))
        return [[(flat.index(t), 1.0) for t in parts]], flat, {t: i for i, t in enumerate(flat)}

    def get_learned_conditioning_prompt_schedules(prompts, steps, *args):
        return [schedules.get(prompts[0], [[steps, prompts[0]]])]

    fake = types.SimpleNamespace(get_multicond_prompt_list=get_multicond_prompt_list,
                                 get_learned_conditioning_prompt_schedules=get_learned_conditioning_prompt_schedules)
    monkeypatch.setattr(modules, "prompt_parser", fake, raising=False)
    return fake


def test_subject_count_with_the_webui_prompt_parser(prompt_parser):
    assert fc.subject_count("a man img AND a woman img", 10) == 2
    assert fc.subject_count("a man img AND a man img", 10) == 2
    assert fc.subject_count("a [man img:boy img:0.5] at the beach", 10) == 1
    with pytest.raises(ParamError, match="parameter 'prompt': the prompt editing"):
        fc.subject_count("a [man img:dog:0.5]", 10)


def test_subject_count_without_the_parser_counts_the_prompt():
    assert fc.subject_count("a man img, (a woman img:1.2) BREAK <lora:img:1> a dog", 10) == 2
