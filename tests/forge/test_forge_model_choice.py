"""On Forge the checkpoint chosen in the UI loads at the next generation, after ``before_process``: Any-Size Diffusion
plans for the chosen checkpoint's family (read from its header), not for the model still in memory (or Forge's
placeholder before the first generation)."""

import torch
from safetensors.torch import save_file

from harness import WebUI
from modules import sd_models, shared

ATTN = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"


def test_chosen_checkpoint_family_decides_the_plan(forge_sd1, tmp_path, monkeypatch):
    path = tmp_path / "sdxl_chosen.safetensors"
    save_file({ATTN: torch.zeros(640, 2048, dtype=torch.float16)}, str(path))
    monkeypatch.setattr(sd_models.model_data, "forge_loading_parameters", {"checkpoint_info": sd_models.CheckpointInfo(str(path))})
    shared.sd_model = forge_sd1
    res = WebUI(sd_model=forge_sd1).txt2img({"Any-Size Diffusion": [{"enabled": True, "width": 600, "height": 400,
                                                                      "buckets": "64x64, 96x64", "steps": 1}]}, steps=1)
    assert "tile=1024" in res.infotexts[0]


def test_first_generation_after_start_plans_and_tiles(forge_sd1, monkeypatch, tmp_path):
    """Forge's placeholder model at before_process (no checkpoint loaded since start): Any-Size Diffusion plans for the
    chosen checkpoint and puts its VAE and tiler on the model Forge loads next; img2img's init image is encoded through
    the tiled VAE."""
    from lib_freediff.webui import forge as forge_host

    path = tmp_path / "sd15_chosen.safetensors"
    save_file({ATTN: torch.zeros(640, 768, dtype=torch.float16)}, str(path))
    monkeypatch.setattr(sd_models.model_data, "forge_loading_parameters", {"checkpoint_info": sd_models.CheckpointInfo(str(path))})
    monkeypatch.setattr(sd_models.model_data, "sd_model", forge_sd1)
    encoded = []
    real = forge_host.tiled_encode_moments
    monkeypatch.setattr(forge_host, "tiled_encode_moments", lambda m, x: encoded.append(x.shape) or real(m, x))
    ui = WebUI(sd_model=forge_sd1)
    shared.sd_model = sd_models.FakeInitialModel()
    try:
        res = ui.img2img({"Any-Size Diffusion": [{"enabled": True, "width": 201, "height": 123, "tile": 128, "offset_range": 64,
                                                   "tiled_vae": "on"}]}, steps=2, denoising_strength=0.5)
    finally:
        shared.sd_model = forge_sd1
    assert res.images[0].size == (201, 123) and "tile=128" in res.infotexts[0]
    assert encoded == [(1, 3, 128, 208)]
