"""FastComposer through the WebUI stand-in: the tiny official-layout release in models/fastcomposer, the
WebUI's CLIP text conditioning (stub ``sd_hijack_clip``) over a tiny CLIPTextModel whose width (32) is the
post-fuse width, and tiny SD1 models around it."""

from contextlib import contextmanager

import pytest
import torch

from lib_freediff.webui import runtime
from modules import sd_samplers_kdiffusion, shared
from tests.fastcomposer import fixtures
from tiny_sd import TinySD

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def clip(tokenizer):
    return fixtures.webui_text_encoder(tokenizer)


@pytest.fixture(scope="session")
def sd1(clip, model_files):
    return TinySD("sd1", context_dim=fixtures.EMBED_DIM, cond_stage_model=clip)


@pytest.fixture(autouse=True)
def model(sd1):
    shared.sd_model = sd1
    yield
    assert not runtime._sessions
    assert not sd1.cond_stage_model._forward_pre_hooks and not sd1.cond_stage_model._forward_hooks
    shared.sd_model = sd1


def release_unet(release):
    """FastComposer's own U-Net as the WebUI holds it after loading the converted checkpoint."""
    from lib_freediff.fastcomposer.convert import convert_unet_state_dict

    net = fixtures.ldm_unet_for_tiny()
    net.load_state_dict(convert_unet_state_dict(release.models["unet"].state_dict()), strict=True)
    return net


def controlnet_mark(cond: torch.Tensor, positive: bool) -> torch.Tensor:
    """``cond`` (``(T, C)`` or ``(B, T, C)``) with sd-webui-controlnet's mark before each row's tokens: one token
    filled with +1024 (a cond) or -1024 (an uncond)."""
    mark = torch.full_like(cond[..., :1, :], 1024.0 if positive else -1024.0)
    return torch.cat([mark, cond], dim=-2)


@contextmanager
def controlnet_marking(unet):
    """sd-webui-controlnet around sampling: the conds reaching the sampler carry its mark (it marks them in
    ``p.sample``, hires conds included; the stand-in computes those inside, so the sampler is wrapped here), and
    its U-Net forward takes the mark off before the U-Net proper. Yields the list of the U-Net calls' contexts
    as they arrived (marked)."""
    seen = []
    sampler = sd_samplers_kdiffusion.KDiffusionSampler
    originals = {"sample": sampler.sample, "sample_img2img": sampler.sample_img2img}
    first_cond = {"sample": 1, "sample_img2img": 2}  # index of conditioning among the args after p

    def marked(name):
        def sample(self, p, *args, **kwargs):
            args = list(args)
            i = first_cond[name]
            args[i], args[i + 1] = controlnet_mark(args[i], True), controlnet_mark(args[i + 1], False)
            return originals[name](self, p, *args, **kwargs)
        return sample

    def unmark(module, args, kwargs):
        context = kwargs["context"]
        seen.append(context)
        if bool(context[:, 0].abs().eq(1024.0).all()):
            return args, {**kwargs, "context": context[:, 1:]}
        return None

    handle = unet.register_forward_pre_hook(unmark, with_kwargs=True, prepend=True)
    sampler.sample, sampler.sample_img2img = marked("sample"), marked("sample_img2img")
    try:
        yield seen
    finally:
        sampler.sample, sampler.sample_img2img = originals["sample"], originals["sample_img2img"]
        handle.remove()
