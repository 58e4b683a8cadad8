"""The API's error path in the WebUI's real stack (FastAPI 0.94, starlette 0.26.1, v1.10.1's middleware) under
anyio 3 (the stock pins) and anyio 4 (pulled in by other extensions and newer hosts), which wraps an exception
escaping the endpoint in an ``ExceptionGroup``: the stand-in must reproduce that, and every refusal of ours
must still be a 4xx naming the feature and the field."""

import importlib.metadata
import os
import subprocess
import sys

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_freediff.errors import ParamError
from lib_freediff.webui.runtime import http_error
from modules.api.api import api_middleware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANYIO3 = os.path.join(ROOT, os.environ.get("FREEDIFF_VENV", ".venv"), "anyio3")
ANYIO_MAJOR = int(importlib.metadata.version("anyio").split(".")[0])


def _client(error):
    app = FastAPI()
    api_middleware(app)

    def generate():  # a plain endpoint, run in the thread pool like the WebUI's txt2img
        raise error

    app.add_api_route("/generate", generate, methods=["POST"])
    return TestClient(app, raise_server_exceptions=False)


def test_stand_in_wraps_errors_like_the_real_stack():
    plain = ParamError("FreeU", "b1", "expected a number, got 'lots'")
    r = _client(plain).post("/generate")
    if ANYIO_MAJOR >= 4:  # the failure the real WebUI showed under anyio 4
        assert r.status_code == 500 and r.json()["error"] == "ExceptionGroup", r.text
    else:
        assert r.status_code == 422 and r.json()["error"] == "ParamError", r.text


def test_refusal_is_a_422_naming_feature_and_field():
    r = _client(http_error(ParamError("FreeU", "b1", "expected a number, got 'lots'"))).post("/generate")
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "ParamError"
    assert body["detail"] == body["errors"] == "FreeU: parameter 'b1': expected a number, got 'lots'"
    assert body["body"] == {"feature": "FreeU", "param": "b1"}


@pytest.mark.skipif(ANYIO_MAJOR < 4, reason="runs the anyio-3 leg from the anyio-4 venv")
def test_api_refusals_under_anyio3(tmp_path):
    """Every feature's API tests (refusals included) once more, in a process whose anyio is 3.7.1."""
    assert os.path.isfile(os.path.join(ANYIO3, "anyio", "__init__.py")), \
        f"anyio 3 is missing from {ANYIO3}: bash tests/run_tests.sh installs it"
    # a WebUI data folder of its own: its session's models/fastcomposer comes and goes without touching this one's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ANYIO3, os.environ.get("PYTHONPATH", "")]), "FREEDIFF_EXPECT_ANYIO": "3",
           "FREEDIFF_STUB_DATA": str(tmp_path)}
    tests = ["tests/test_api_stack.py", "tests/freeu/test_api.py", "tests/fastcomposer_webui/test_api.py",
             "tests/asd_webui/test_asd_generation.py::test_api_dict_and_list",
             "tests/asd_webui/test_asd_generation.py::test_api_bad_values_name_the_field", "tests/asd_webui/test_asd_generation.py::test_api_img2img"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
