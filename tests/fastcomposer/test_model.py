"""Post-fuse formula, fuse() locality, image encoding."""

import pytest
import torch
import torch.nn.functional as F

from lib_freediff.errors import ParamError
from lib_freediff.fastcomposer import load_fastcomposer, subject_positions
from lib_freediff.fastcomposer.model import FastComposerModel, PostfuseModule

from . import fixtures


def reference_postfuse(sd, t, e, eps=1e-5):
    """The formula, written out from the parameters: t1 = MLP1([t;e]) + t; t2 = MLP2(t1) + t1; LN(t2)."""
    def ln(x, pre):
        return F.layer_norm(x, (x.shape[-1],), sd[pre + ".weight"], sd[pre + ".bias"], eps)

    def mlp(x, pre):
        h = ln(x, pre + ".layernorm")
        h = h @ sd[pre + ".fc1.weight"].T + sd[pre + ".fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / 2 ** 0.5))  # exact GELU
        return h @ sd[pre + ".fc2.weight"].T + sd[pre + ".fc2.bias"]

    t1 = mlp(torch.cat([t, e], -1), "mlp1") + t
    t2 = mlp(t1, "mlp2") + t1
    return ln(t2, "layer_norm")


def test_postfuse_parameter_names_match_the_release():
    names = set(PostfuseModule(8).state_dict())
    assert names == {f"{m}.{p}" for m in ("mlp1", "mlp2") for p in
                     ("layernorm.weight", "layernorm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")} \
        | {"layer_norm.weight", "layer_norm.bias"}
    pf = PostfuseModule(8)
    assert pf.mlp1.fc1.weight.shape == (8, 16) and pf.mlp1.fc2.weight.shape == (8, 8)
    assert pf.mlp2.fc1.weight.shape == (8, 8) and pf.mlp1.layernorm.weight.shape == (16,)


def test_postfuse_equals_formula():
    torch.manual_seed(1)
    pf = PostfuseModule(16).double()
    with torch.no_grad():
        for p in pf.parameters():
            p.normal_(0, 0.5)
    sd = {k: v for k, v in pf.state_dict().items()}
    t = torch.randn(5, 16, dtype=torch.float64)
    e = torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(pf(t, e), reference_postfuse(sd, t, e), rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def model(release):
    return load_fastcomposer(release.bin_path)


def test_encode_subjects_is_projected_pooled_clip_output(model, release):
    torch.manual_seed(2)
    pix = torch.randn(2, 3, 224, 224)
    got = model.encode_subjects(pix)
    vision = release.models["vision"]
    with torch.no_grad():
        out = vision(pixel_values=pix)
        expect = vision.visual_projection(vision.vision_model(pixel_values=pix)[1])  # pooled → projection
    assert got.shape == (2, fixtures.EMBED_DIM)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, out.image_embeds, rtol=1e-5, atol=1e-5)
    # other sizes are resized to the encoder's
    assert model.encode_subjects(torch.randn(1, 3, 100, 100)).shape == (1, fixtures.EMBED_DIM)


def test_fuse_changes_only_marked_positions(model):
    torch.manual_seed(3)
    b, t, d = 3, 154, fixtures.EMBED_DIM
    text = torch.randn(b, t, d)
    subj = torch.randn(2, d)
    positions = [[2, 5], [80, None], []]
    out = model.fuse(text, subj, positions)
    assert out.shape == text.shape and out.dtype == text.dtype
    changed = (out != text).any(-1)
    expect = torch.zeros(b, t, dtype=torch.bool)
    expect[0, 2] = expect[0, 5] = expect[1, 80] = True
    assert torch.equal(changed, expect)
    sd = model.postfuse_module.state_dict()
    torch.testing.assert_close(out[0, 5], reference_postfuse(sd, text[0, 5], subj[1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1, 80], reference_postfuse(sd, text[1, 80], subj[0]), rtol=1e-5, atol=1e-5)
    assert torch.equal(text, text.clone())  # input untouched (fuse returns a copy)


def test_fuse_half_precision_keeps_dtype(model):
    text = torch.randn(1, 77, fixtures.EMBED_DIM, dtype=torch.float16)
    out = model.fuse(text, torch.randn(1, fixtures.EMBED_DIM), [[4]])
    assert out.dtype == torch.float16
    assert torch.equal(out[0, :4], text[0, :4]) and not torch.equal(out[0, 4], text[0, 4])


@pytest.mark.parametrize("positions, param", [([[77]], "positions"), ([[1, 2]], "images"), ([[1], [2]], "positions")])
def test_fuse_rejects_bad_positions(model, positions, param):
    with pytest.raises(ParamError) as e:
        model.fuse(torch.randn(1, 77, fixtures.EMBED_DIM), torch.randn(1, fixtures.EMBED_DIM), positions)
    assert e.value.param == param


def test_end_to_end_with_webui_style_conditioning(model, release, tokenize):
    """Text encoder output in the WebUI's chunk layout; subject fused at the marked nouns only."""
    text_model = release.models["text"]
    lay = subject_positions("(a man img:1.1), " + "happy " * 80 + "and a woman img", tokenize)
    from .test_conditioning import webui_layout

    flat = webui_layout(lay.clean_prompt, tokenize)
    ids = torch.tensor([[49406 if x == -1 else 49407 if x == -2 else x for x in flat]])
    with torch.no_grad():
        cond = torch.cat([text_model(input_ids=c).last_hidden_state for c in ids.split(77, dim=1)], dim=1)
    subj = model.encode_subjects(torch.randn(2, 3, 224, 224))
    aug = model.fuse(cond, subj, [lay.positions])
    changed = (aug != cond).any(-1)[0].nonzero().flatten().tolist()
    assert changed == lay.positions and cond.shape[1] == 154


def test_from_config_builds_full_size_shapes():
    cfg = fixtures.tiny_vision_config()
    m = FastComposerModel.from_config(cfg, embed_dim=fixtures.EMBED_DIM)
    assert m.image_size == 224 and m.embed_dim == fixtures.EMBED_DIM
