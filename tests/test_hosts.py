"""Host detection and the hosts that refuse: on an ldm_patched WebUI (reForge, Forge Classic) every feature refuses with
a clear 4xx instead of running as if it were off; with the features off, nothing changes there."""

import pytest

from harness import WebUI, same_images
from lib_freediff.webui import host
from lib_freediff.webui.unsupported import LdmPatchedHost
from modules import shared


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    def make(*names):
        for name in names:
            (tmp_path / name).mkdir()
            (tmp_path / name / "__init__.py").write_text("")
        monkeypatch.syspath_prepend(str(tmp_path))
    return make


def test_detects_a1111_here():
    assert host.detect() == host.A1111 and host.current().name == "AUTOMATIC1111"


def test_detects_forge_and_ldm_patched_hosts(fake_package):
    fake_package("ldm_patched")
    assert host.detect() == host.LDM_PATCHED
    fake_package("modules_forge", "backend")
    assert host.detect() == host.FORGE


@pytest.fixture
def ldm_patched_host(monkeypatch):
    monkeypatch.setattr(host, "_adapter", LdmPatchedHost())


@pytest.mark.parametrize("title,args", [
    ("FreeU", [{"enabled": True}]),
    ("Any-Size Diffusion", [{"enabled": True, "width": 200, "height": 120, "tile": 128, "offset_range": 64}]),
    ("FastComposer", [{"enabled": True}]),
])
def test_ldm_patched_host_refuses_every_feature(sd1, ldm_patched_host, title, args):
    shared.sd_model = sd1
    ui = WebUI(sd_model=sd1)
    calls = []
    handle = sd1.model.diffusion_model.register_forward_hook(lambda m, a, out: calls.append(1))
    try:
        r = ui.api_client().post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
                                                           "alwayson_scripts": {title: {"args": args}}})
    finally:
        handle.remove()
    assert r.status_code == 422, r.text
    assert f"{title} cannot run on an ldm_patched WebUI" in r.json()["detail"] and "Forge" in r.json()["detail"]
    assert not calls


def test_ldm_patched_host_with_features_off_is_untouched(sd1, bare, ldm_patched_host):
    shared.sd_model = sd1
    assert same_images(bare.txt2img(), WebUI(sd_model=sd1).txt2img())
