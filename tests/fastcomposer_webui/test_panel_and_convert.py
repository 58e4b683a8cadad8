"""The panel's controls and actions (model list, loaded-model check, conversion, free memory) and the
conversion command; generating with the converted checkpoint's U-Net."""

import os
import re
import shutil
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


def test_no_model_file_shows_the_set_up_steps_in_the_panel(model_files, monkeypatch, tmp_path, sd1):
    """Without a model file the panel opens with the whole set-up, and says it again when it is turned on."""
    monkeypatch.setattr(paths, "models_path", os.path.join(paths.data_path, "fresh-models"))
    assert fc.list_models() == [] and fc.default_model_choice() == ""
    assert os.path.isdir(os.path.join(paths.data_path, "fresh-models", "fastcomposer"))  # made for the user to fill
    webui = WebUI(sd_model=sd1)
    script = webui.scripts[("txt2img", "FastComposer")]
    status = next(b for b in webui.demo.blocks.values() if getattr(b, "elem_id", None) == script.elem_id("status"))
    for text in (status.value, fc.model_status("")):
        assert "Download `pytorch_model.bin` from the authors' model page, [mit-han-lab/fastcomposer](https://huggingface.co/mit-han-lab/fastcomposer)" in text
        assert "Put it into `fresh-models/fastcomposer/` and click 🔄" in text
        assert "Create WebUI checkpoint" in text and "`fastcomposer-pytorch_model`" in text
    monkeypatch.undo()
    assert fc.setup_hint() == ""  # with a model there, the panel starts without it


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
    assert "Put it into `<models-dir>/fastcomposer/`" in fc.model_status("")


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


def readme_commands(lang: str) -> list[str]:
    """The conversion commands of the README's FastComposer section, in its fenced blocks of ``lang``."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("<!-- fastcomposer:start -->"):text.index("<!-- fastcomposer:end -->")]
    return [line for block_lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S) if block_lang == lang
            for line in body.splitlines() if "lib_freediff/fastcomposer " in line]


def test_readme_commands_run_as_written_from_the_webui_folder(release, tmp_path):
    """A WebUI folder as users have it (extensions/sd-webui-freediff, models/fastcomposer/pytorch_model.bin); the
    README's commands are run there, only the interpreter swapped for this one. The Windows lines are the same
    commands with Windows' interpreter path: paths with '/' only, which Windows' Python reads as well."""
    posix, windows = readme_commands("sh"), readme_commands("bat")
    assert len(posix) == len(windows) == 2
    webui = tmp_path / "webui"
    (webui / "extensions").mkdir(parents=True)
    os.symlink(ROOT, webui / "extensions" / "sd-webui-freediff")
    (webui / "models" / "fastcomposer").mkdir(parents=True)
    (webui / "models" / "Stable-diffusion").mkdir()
    shutil.copy(release.bin_path, webui / "models" / "fastcomposer" / "pytorch_model.bin")
    for line, win in zip(posix, windows):
        assert line.startswith("venv/bin/python ") and win.startswith(".\\venv\\Scripts\\python ")
        args = line.split()[1:]
        assert win.split()[1:] == args and not any("\\" in a for a in args)
        r = subprocess.run([sys.executable, *args], cwd=webui, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "wrote" in r.stdout
    with safe_open(str(webui / "models" / "Stable-diffusion" / "fastcomposer-pytorch_model.safetensors"), "pt") as f:
        assert any(k.startswith("model.diffusion_model.") for k in f.keys())
    assert (webui / "models" / "fastcomposer" / "fastcomposer.safetensors").exists()


def test_install_creates_the_model_folder(tmp_path):
    """install.py, as the WebUI runs it (its folder on PYTHONPATH), creates models/fastcomposer where the WebUI's
    models are; without the WebUI's modules, beside the extensions/ folder it sits in."""
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "tests", "webui_stub"), "FREEDIFF_STUB_DATA": str(data)}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "install.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (data / "models" / "fastcomposer").is_dir()
    ext = tmp_path / "webui" / "extensions" / "sd-webui-freediff"
    ext.mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "install.py"), ext / "install.py")
    env.pop("PYTHONPATH")
    r = subprocess.run([sys.executable, str(ext / "install.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "webui" / "models" / "fastcomposer").is_dir()
