"""A checkpoint's family read from its safetensors header, for the generation whose checkpoint is not loaded yet at
``before_process`` (an API request's ``override_settings``; on Forge, any newly chosen checkpoint)."""

import pytest
import torch
from safetensors.torch import save_file

from harness import WebUI, infotexts_of
from lib_freediff.unet_info import checkpoint_family, family_from_shapes
from modules import sd_models, shared

ATTN = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def checkpoint(tmp_path, name, tensors):
    path = tmp_path / name
    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in tensors.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("tensors,family", [
    ({ATTN: (320, 768), "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)}, "sd1"),
    ({ATTN: (320, 1024), "cond_stage_model.model.ln_final.weight": (1024,)}, "sd2"),
    ({ATTN.replace("input_blocks.1.1", "input_blocks.4.1"): (640, 2048), "conditioner.embedders.1.model.ln_final.weight": (1280,)}, "sdxl"),
    ({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": (9, 3)}, "flux"),
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (9, 3)}, "sd3"),
    ({"first_stage_model.decoder.conv_in.weight": (4, 4, 3, 3)}, None),
])
def test_family_from_the_header(tmp_path, tensors, family):
    assert family_from_shapes(tensors) == family
    assert checkpoint_family(checkpoint(tmp_path, "x.safetensors", tensors)) == family


def test_unreadable_and_other_formats_tell_nothing(tmp_path):
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")
    (tmp_path / "model.ckpt").write_bytes(b"PK")
    assert checkpoint_family(str(tmp_path / "cut.safetensors")) is None
    assert checkpoint_family(str(tmp_path / "model.ckpt")) is None
    assert checkpoint_family(str(tmp_path / "missing.safetensors")) is None


@pytest.fixture
def aliases(tmp_path, monkeypatch):
    found = {"sdxl_other.safetensors": checkpoint(tmp_path, "sdxl_other.safetensors", {ATTN: (640, 2048)}),
             "flux_other.safetensors": checkpoint(tmp_path, "flux_other.safetensors", {"double_blocks.0.x": (2, 2)})}
    monkeypatch.setattr(sd_models, "checkpoint_aliases", {k: sd_models.CheckpointInfo(v) for k, v in found.items()})
    return found


def test_api_override_checkpoint_plans_for_its_family(sd1, aliases):
    """An SD1.5 model is loaded; the request's override names an SDXL checkpoint: Any-Size Diffusion plans for SDXL
    (tile 'auto' = 1024 px), and a Flux override is refused before any model work."""
    shared.sd_model = sd1
    client = WebUI(sd_model=sd1).api_client()
    target = {"enabled": True, "width": 600, "height": 400, "buckets": "64x64, 96x64", "steps": 1}

    def post(checkpoint_name):
        return client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "override_settings": {"sd_model_checkpoint": checkpoint_name},
                                                       "alwayson_scripts": {"Any-Size Diffusion": {"args": [target]}}})

    r = post("sdxl_other.safetensors")
    assert r.status_code == 200, r.text
    assert "tile=1024" in infotexts_of(r.json())[0]
    r = post("flux_other.safetensors")
    assert r.status_code == 422 and "the checkpoint is flux" in r.json()["detail"]
    assert "tile=512" in infotexts_of(post("unknown.safetensors").json())[0]  # not a known checkpoint: the loaded one
