"""Forge's API stack (fastapi 0.104, starlette 0.27, pydantic 2, no WebUI middleware) under anyio 3 (Forge's pins) and
anyio 4 (pulled in by other extensions): every refusal of ours is a 4xx whose detail names the feature and the field."""

import importlib.metadata
import os
import subprocess
import sys

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_freediff.errors import ParamError
from lib_freediff.webui.runtime import http_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANYIO3 = os.path.join(ROOT, os.environ.get("FREEDIFF_VENV", ".venv"), "anyio3")
ANYIO_MAJOR = int(importlib.metadata.version("anyio").split(".")[0])


def test_forge_stack_versions():
    assert importlib.metadata.version("fastapi") == "0.104.1" and importlib.metadata.version("pydantic").startswith("2.")
    assert importlib.metadata.version("gradio") == "4.40.0"


def test_refusal_raised_in_an_endpoint_is_a_422_naming_feature_and_field():
    app = FastAPI()  # Forge's Api adds no middleware or handlers: FastAPI's own answer

    def generate():  # a plain endpoint, run in the thread pool like Forge's txt2img
        raise http_error(ParamError("FreeU", "b1", "expected a number, got 'lots'"))

    app.add_api_route("/generate", generate, methods=["POST"])
    r = TestClient(app, raise_server_exceptions=False).post("/generate")
    assert r.status_code == 422 and r.json() == {"detail": "FreeU: parameter 'b1': expected a number, got 'lots'"}


@pytest.mark.skipif(ANYIO_MAJOR < 4, reason="runs the anyio-3 leg from the anyio-4 one")
def test_forge_api_tests_under_anyio3(tmp_path):
    assert os.path.isfile(os.path.join(ANYIO3, "anyio", "__init__.py")), f"anyio 3 is missing from {ANYIO3}"
    # a WebUI data folder of its own: its session's models/fastcomposer comes and goes without touching this one's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ANYIO3, os.environ.get("PYTHONPATH", "")]), "FREEDIFF_EXPECT_ANYIO": "3",
           "FREEDIFF_STUB_DATA": str(tmp_path)}
    tests = ["tests/forge/test_forge_api_stack.py", "tests/forge/test_forge_freeu.py::test_api_dict_list_and_bad_value",
             "tests/forge/test_forge_freeu.py::test_a_model_without_unet_is_refused_not_run_plain",
             "tests/forge/test_forge_asd.py::test_api_txt2img_and_img2img_with_controlnet",
             "tests/forge/test_forge_asd.py::test_multidiffusion_integrated_at_the_same_time_is_refused",
             "tests/forge/test_forge_fastcomposer.py::test_api_named_positional_and_refusals",
             "tests/forge/test_forge_all_three.py::test_api_all_three_exact_odd_size"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
