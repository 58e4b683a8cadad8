"""What Forge cannot run yet is refused with a clear 4xx, never run as if it were off."""

from harness import WebUI
from modules import shared


def test_fastcomposer_is_refused_on_forge_naming_why(forge_sd1):
    shared.sd_model = forge_sd1
    r = WebUI(sd_model=forge_sd1).api_client().post("/sdapi/v1/txt2img", json={
        "prompt": "a man img", "steps": 2, "width": 64, "height": 64,
        "alwayson_scripts": {"FastComposer": {"args": [{"enabled": True}]}}})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("FastComposer cannot run on Forge")
