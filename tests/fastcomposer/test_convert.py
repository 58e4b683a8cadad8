"""diffusers/transformers → WebUI (ldm) conversion of FastComposer's U-Net, text encoder and VAE."""

import os

import pytest
import torch

from lib_freediff.errors import ModelFileError
from lib_freediff.fastcomposer.convert import (UnmappedKeysError, convert_text_state_dict, convert_unet_state_dict,
                                               convert_vae_state_dict, is_fastcomposer_unet, unet_fingerprint,
                                               unet_key_map, write_webui_checkpoint)
from lib_freediff.fastcomposer.loader import CheckpointReader

from . import fixtures

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def ldm_unet(release):
    net = fixtures.ldm_unet_for_tiny()
    sd = convert_unet_state_dict(release.models["unet"].state_dict())
    net.load_state_dict(sd, strict=True)
    return net


def test_unet_keys_all_mapped_one_to_one(release):
    src = release.models["unet"].state_dict()
    kmap, bad = unet_key_map(src)
    assert not bad
    assert len(set(kmap.values())) == len(kmap)
    ldm_keys = set(fixtures.ldm_unet_for_tiny().state_dict())
    assert set(kmap.values()) == ldm_keys
    # SD1.5 landmarks
    assert kmap["conv_in.weight"] == "input_blocks.0.0.weight"
    assert kmap["down_blocks.0.downsamplers.0.conv.weight"] == "input_blocks.3.0.op.weight"
    assert kmap["mid_block.attentions.0.proj_in.weight"] == "middle_block.1.proj_in.weight"
    assert kmap["up_blocks.0.upsamplers.0.conv.weight"] == "output_blocks.2.1.conv.weight"
    assert kmap["up_blocks.1.upsamplers.0.conv.weight"] == "output_blocks.5.2.conv.weight"
    assert kmap["up_blocks.2.resnets.2.conv_shortcut.weight"] == "output_blocks.8.0.skip_connection.weight"
    assert kmap["time_embedding.linear_2.bias"] == "time_embed.2.bias"
    assert kmap["conv_norm_out.weight"] == "out.0.weight"


def test_unet_output_matches_diffusers(release, ldm_unet):
    unet = release.models["unet"]
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([10.0, 700.0])
    ctx = torch.randn(2, 77, fixtures.EMBED_DIM)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx).sample
        got = ldm_unet(x, timesteps=t, context=ctx)
    assert ref.abs().mean() > 1e-2  # not a trivial output
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_unet_linear_projections_are_reshaped(release):
    sd = dict(release.models["unet"].state_dict())
    sd = {k: (v[:, :, 0, 0] if k.endswith(("proj_in.weight", "proj_out.weight")) else v) for k, v in sd.items()}
    out = convert_unet_state_dict(sd)
    assert out["middle_block.1.proj_in.weight"].ndim == 4
    assert convert_unet_state_dict(sd, linear_proj=True)["middle_block.1.proj_in.weight"].ndim == 2


def test_unmapped_unet_key_is_listed(release):
    sd = dict(release.models["unet"].state_dict())
    sd["add_embedding.linear_1.weight"] = torch.zeros(1)
    sd["down_blocks.0.attentions.0.transformer_blocks.0.weird.weight"] = torch.zeros(1)
    with pytest.raises(UnmappedKeysError) as e:
        convert_unet_state_dict(sd)
    assert "add_embedding.linear_1.weight" in str(e.value)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.weird.weight" in str(e.value)


def test_text_encoder_conversion(release, tokenize):
    from transformers import CLIPTextModel

    text = release.models["text"]
    # the release layout has no "text_model." level
    src = {k[len("text_model."):]: v for k, v in text.state_dict().items()}
    out = convert_text_state_dict(src, out_prefix="text_model.")
    target = CLIPTextModel(text.config).eval()
    target.load_state_dict(out, strict=True)
    toks = tokenize("a man and a woman")
    ids = torch.tensor([[49406] + toks + [49407] * (76 - len(toks))])
    with torch.no_grad():
        torch.testing.assert_close(target(input_ids=ids).last_hidden_state, text(input_ids=ids).last_hidden_state)
    assert torch.equal(out["text_model.embeddings.position_ids"], torch.arange(77)[None])
    # also from the transformers layout (with text_model.)
    assert convert_text_state_dict(text.state_dict()).keys() == {k[len("text_model."):] for k in out}


def _vae_pair(release):
    vae = release.models["vae"]
    ldm = fixtures.ldm_vae_parts_for_tiny()
    ldm.load_state_dict(convert_vae_state_dict(vae.state_dict()), strict=True)
    return vae, ldm


def test_vae_decode_and_encode_match_diffusers(release):
    vae, ldm = _vae_pair(release)
    torch.manual_seed(0)
    z = torch.randn(1, 4, 8, 8)
    img = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = vae.decode(z).sample
        got = ldm["decoder"](ldm["post_quant_conv"](z))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        ref_m = vae.encode(img).latent_dist.mean
        got_m = ldm["quant_conv"](ldm["encoder"](img))[:, :4]
        torch.testing.assert_close(got_m, ref_m, rtol=1e-5, atol=1e-5)


def test_vae_old_attention_names(release):
    sd = release.models["vae"].state_dict()
    ren = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in sd.items():
        for a, b in ren.items():
            k = k.replace(f".attentions.0.{a}.", f".attentions.0.{b}.")
        old[k] = v
    assert any(".query." in k for k in old)
    new, conv = convert_vae_state_dict(sd), convert_vae_state_dict(old)
    assert new.keys() == conv.keys() and all(torch.equal(new[k], conv[k]) for k in new)
    assert new["decoder.mid.attn_1.q.weight"].ndim == 4


def _expected_webui_keys(release):
    from transformers import CLIPTextModel

    unet = {"model.diffusion_model." + k: tuple(v.shape) for k, v in fixtures.ldm_unet_for_tiny().state_dict().items()}
    text = {"cond_stage_model.transformer." + k: tuple(v.shape)
            for k, v in CLIPTextModel(release.models["text"].config).state_dict().items()}
    vae = {"first_stage_model." + k: tuple(v.shape) for k, v in fixtures.ldm_vae_parts_for_tiny().state_dict().items()}
    return {**unet, **text, **vae}


@pytest.mark.parametrize("src", ["bin", "st"])
def test_write_webui_checkpoint(release, tmp_path, src):
    path = release.bin_path if src == "bin" else release.st_path
    out = tmp_path / "fastcomposer-sd15.safetensors"
    write_webui_checkpoint(path, out)
    assert os.listdir(tmp_path) == [out.name]
    expected = _expected_webui_keys(release)
    with CheckpointReader(out) as r:
        got = {k: r.shape(k) for k in r.keys()}
        assert got == expected
        for k in r.keys():
            assert r.dtype(k) == (torch.int64 if k.endswith("position_ids") else torch.float16)
        # values survive (bf16/fp32 → fp16 rounding only)
        w = r.get("model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight")
        src_w = release.state_dict["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
        assert torch.equal(w, src_w.half())
        q = r.get("first_stage_model.decoder.mid.attn_1.q.weight")
        assert q.shape[-2:] == (1, 1)
        ldm = fixtures.ldm_unet_for_tiny()
        ldm.load_state_dict({k[len("model.diffusion_model."):]: r.get(k).float() for k in r.keys()
                             if k.startswith("model.diffusion_model.")}, strict=True)
    assert is_fastcomposer_unet(ldm, path)
    assert is_fastcomposer_unet(ldm.half(), path)


def test_write_webui_checkpoint_refuses_unmapped_and_incomplete(release, tmp_path):
    sd = dict(release.state_dict)
    sd["unet.mystery.weight"] = torch.zeros(2)
    sd["controlnet.x"] = torch.zeros(2)
    bad = tmp_path / "bad.bin"
    torch.save(sd, bad)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ModelFileError) as e:
        write_webui_checkpoint(bad, out)
    assert "unet.mystery.weight" in str(e.value) and "controlnet.x" in str(e.value)
    assert not out.exists()
    sd = {k: v for k, v in release.state_dict.items() if not k.startswith("vae.")}
    torch.save(sd, bad)
    with pytest.raises(ModelFileError, match=r"missing keys vae\."):
        write_webui_checkpoint(bad, out)
    assert sorted(os.listdir(tmp_path)) == ["bad.bin"]


def test_is_fastcomposer_unet_says_no_to_other_weights(release, ldm_unet):
    fp = unet_fingerprint(release.st_path)
    assert fp and all(v.dtype == torch.float32 for v in fp.values())
    assert is_fastcomposer_unet(ldm_unet, fp)
    sd = {"model.diffusion_model." + k: v for k, v in ldm_unet.state_dict().items()}
    assert is_fastcomposer_unet(sd, fp)
    torch.manual_seed(5)
    other = fixtures.ldm_unet_for_tiny()
    assert not is_fastcomposer_unet(other, fp)
    nudged = fixtures.ldm_unet_for_tiny()
    nudged.load_state_dict(ldm_unet.state_dict())
    with torch.no_grad():
        p = dict(nudged.named_parameters())[next(iter(fp))]
        p.mul_(1.01)  # a 1% change (e.g. a merged LoRA) is not the same U-Net
    assert not is_fastcomposer_unet(nudged, fp)


def test_library_code_does_not_import_diffusers_or_webui():
    import re as _re
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[2] / "lib_freediff" / "fastcomposer"
    for f in pkg.glob("*.py"):
        src = f.read_text()
        assert not _re.search(r"^\s*(import|from)\s+(diffusers|modules)\b", src, _re.M), f.name


def test_full_size_sd15_mapping_on_meta():
    """The real SD1.5 topologies (built on the meta device: no memory, no compute)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    from lib_freediff.fastcomposer.convert import _unet_tensor, _vae_tensor, vae_key_map

    with torch.device("meta"):
        du = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # defaults = SD1.5
        lu = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=320,
                       attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=(1, 2, 4, 4), num_heads=8,
                       use_spatial_transformer=True, transformer_depth=1, context_dim=768, use_checkpoint=False,
                       legacy=False)
        dv = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                           up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2)
        dd = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=(1, 2, 4, 4),
                  num_res_blocks=2, attn_resolutions=[], dropout=0.0)
        enc, dec = Encoder(**dd), Decoder(**dd)
    dsd, lsd = du.state_dict(), lu.state_dict()
    km, bad = unet_key_map(dsd)
    assert not bad and len(dsd) == len(lsd) == 686 and set(km.values()) == set(lsd)
    assert all(tuple(_unet_tensor(k, dsd[k]).shape) == tuple(lsd[km[k]].shape) for k in dsd)
    vsd = dv.state_dict()
    ldm_v = {**{"encoder." + k: v for k, v in enc.state_dict().items()},
             **{"decoder." + k: v for k, v in dec.state_dict().items()}}
    vm, vbad = vae_key_map(vsd)
    assert not vbad
    assert set(vm.values()) == set(ldm_v) | {f"{c}.{p}" for c in ("quant_conv", "post_quant_conv") for p in ("weight", "bias")}
    assert all(tuple(_vae_tensor(vm[k], vsd[k]).shape) == tuple(ldm_v[vm[k]].shape) for k in vsd if vm[k] in ldm_v)
