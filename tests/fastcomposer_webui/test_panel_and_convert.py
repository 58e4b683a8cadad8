"""The panel's controls and actions (model list, loaded-model check, conversion, free memory) and the
conversion command; generating with the converted checkpoint's U-Net."""

import os
import subprocess
import sys

import pytest
from safetensors import safe_open

from harness import ROOT, WebUI, make_image
from lib_freediff.fastcomposer.__main__ import checkpoint_name_for, main
from lib_freediff.webui import fastcomposer as fc
from modules import paths, shared
from tests.fastcomposer import fixtures
from tiny_sd import TinySD

from .conftest import release_unet

PROMPT = "a man img and a woman img at the beach"


@pytest.fixture(scope="module")
def webui(sd1):
    return WebUI(sd_model=sd1)


@pytest.fixture
def checkpoint_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(shared.cmd_opts, "ckpt_dir", str(tmp_path / "Stable-diffusion"), raising=False)
    return tmp_path / "Stable-diffusion"


def test_panel_controls_and_defaults(webui):
    script = webui.scripts[("txt2img", "FastComposer")]
    enabled, model, images, alpha, hires = script.controls
    assert [enabled.value, model.value, images.value, alpha.value, hires.value] == [False, "fastcomposer.safetensors", [], 0.7, True]
    assert model.choices == ["fastcomposer.safetensors", "pytorch_model.bin"]
    assert script.paste_field_names == ["FastComposer"]
    a, b = make_image(seed=1), make_image(seed=2)
    assert fc.collect_images(None, a, None, b) == [a, b]  # empty slots are skipped, order kept
    assert webui.scripts[("img2img", "FastComposer")].controls[3].value == 0.7


def test_model_status_says_when_the_unet_is_not_fastcomposers(sd1, release):
    assert "**not** FastComposer's U-Net" in fc.model_status("")
    shared.sd_model = TinySD("sd1", unet=release_unet(release), cond_stage_model=sd1.cond_stage_model)
    assert fc.model_status("fastcomposer.safetensors").startswith("✅")
    assert "not a model" in fc.model_status("missing.bin")


def test_convert_button_writes_a_webui_checkpoint(checkpoint_dir, release, sd1, webui, capsys):
    status = fc.convert_model("fastcomposer.safetensors")
    out = checkpoint_dir / "fastcomposer-webui.safetensors"
    assert f"Wrote `{out}`" in status and out.exists()
    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
    assert {k.split(".")[0] for k in keys} == {"model", "cond_stage_model", "first_stage_model"}
    assert any(k.startswith("model.diffusion_model.") for k in keys)
    assert "exists already" in fc.convert_model("fastcomposer.safetensors")
    # the WebUI loads it: its U-Net weights make the loaded model FastComposer's
    unet = fixtures.ldm_unet_for_tiny()
    with safe_open(str(out), "pt") as f:
        unet.load_state_dict({k[len("model.diffusion_model."):]: f.get_tensor(k).float() for k in keys
                              if k.startswith("model.diffusion_model.")})
    shared.sd_model = TinySD("sd1", unet=unet, cond_stage_model=sd1.cond_stage_model)
    assert fc.model_status("").startswith("✅")
    capsys.readouterr()
    res = webui.txt2img({"FastComposer": [True, "", [make_image(seed=1), make_image(seed=2)]]}, prompt=PROMPT, steps=2)
    assert "FastComposer: " in res.infotexts[0]
    assert "not FastComposer's U-Net" not in capsys.readouterr().out
    assert fc.convert_model("missing.bin").startswith("**Error:** FastComposer: parameter 'model': 'missing.bin' is not a model")


def test_free_memory_button():
    fc.CACHE.get(fc.resolve_model("")[1])
    assert fc.CACHE.model is not None
    assert "Freed" in fc.free_memory()
    assert fc.CACHE.model is None


def test_no_model_file_is_explained(model_files, monkeypatch, tmp_path):
    monkeypatch.setattr(fc.models, "models_dir", lambda: str(tmp_path / "empty"))
    assert fc.list_models() == [] and fc.default_model_choice() == ""
    assert "no FastComposer model in" in fc.model_status("")


def test_panel_messages_name_model_files_relative_to_the_webui(model_files, checkpoint_dir, monkeypatch):
    broken = os.path.join(model_files, "zz-broken.bin")
    with open(broken, "wb") as f:
        f.write(b"<html><body>Too many requests</body></html>")
    try:
        status = fc.model_status("zz-broken.bin")
        converted = fc.convert_model("zz-broken.bin")
    finally:
        os.remove(broken)
    assert status == "⚠️ models/fastcomposer/zz-broken.bin: an HTML page, not a checkpoint (a failed download?)"
    assert converted == "**Error:** models/fastcomposer/zz-broken.bin: an HTML page, not a checkpoint (a failed download?)"
    assert fc.model_status("missing.bin").startswith("⚠️ 'missing.bin' is not a model in models/fastcomposer; available: ")
    # a --models-dir outside the WebUI's folder is named as such, never by its absolute path
    monkeypatch.setattr(paths, "models_path", os.path.join(os.path.dirname(paths.data_path), "elsewhere"))
    assert "no FastComposer model in <models-dir>/fastcomposer: " in fc.model_status("")


def test_command_line_conversion(release, tmp_path, capsys):
    dst = tmp_path / "out"
    dst.mkdir()
    assert main(["convert", release.bin_path, str(dst), "--dtype", "fp32"]) == 0
    written = dst / checkpoint_name_for(release.bin_path)
    assert written.name == "fastcomposer-pytorch_model.safetensors" and written.exists()
    assert "wrote" in capsys.readouterr().out
    assert main([release.bin_path, str(written)]) == 1  # "convert" is the default command; no overwrite
    assert "exists already" in capsys.readouterr().err
    assert main([release.bin_path, str(written), "--force"]) == 0
    assert main(["convert", str(tmp_path / "nope.bin"), str(dst / "x.safetensors")]) == 1
    assert "nope.bin: file not found" in capsys.readouterr().err
    copy = tmp_path / "copy.safetensors"
    assert main(["safetensors", release.bin_path, str(copy)]) == 0 and copy.exists()


def test_command_runs_as_a_module(release, tmp_path):
    out = tmp_path / "cli.safetensors"
    r = subprocess.run([sys.executable, "-m", "lib_freediff.fastcomposer", "convert", release.st_path, str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.exists() and "wrote" in r.stdout
