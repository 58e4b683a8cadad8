import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUB = os.path.join(ROOT, "tests", "webui_stub")
# FREEDIFF_HOST=forge: Forge's stand-in (its `backend`, `modules_forge` and the `modules` files Forge changed) first
FORGE_STUB = os.path.join(ROOT, "tests", "forge_stub")
HOST = os.environ.get("FREEDIFF_HOST", "a1111")
for path in (ROOT, STUB, *([FORGE_STUB] if HOST == "forge" else [])):
    if path not in sys.path:
        sys.path.insert(0, path)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("FREEDIFF_STUB_DATA", tempfile.mkdtemp(prefix="freediff-stub-data-"))

import torch  # noqa: E402

# tiny models are far steadier (and, on 2 cores, not slower) on one thread
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sd1():
    from tiny_sd import TinySD

    return TinySD("sd1", context_dim=64)


@pytest.fixture(scope="module")
def webui(sd1):
    """A WebUI with the extension's scripts loaded and their UI built, over ``sd1``."""
    from harness import WebUI

    return WebUI(sd_model=sd1)


@pytest.fixture(scope="module")
def bare(sd1):
    """The same WebUI without the extension."""
    from harness import WebUI

    return WebUI(script_files=[], sd_model=sd1)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """CLIP's tokenizer, offline (tests/fastcomposer/fixtures.py)."""
    from tests.fastcomposer import fixtures

    return fixtures.build_clip_tokenizer(str(tmp_path_factory.mktemp("clip_tokenizer")))


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    """A tiny FastComposer checkpoint in the official release layout, as .bin and .safetensors."""
    from tests.fastcomposer import fixtures

    return fixtures.write_tiny_release(str(tmp_path_factory.mktemp("fastcomposer_release")))


@pytest.fixture(scope="session")
def model_files(release):
    """The release as the WebUI's models/fastcomposer/fastcomposer.safetensors and …/pytorch_model.bin."""
    import shutil

    from lib_freediff.webui import fastcomposer as fc

    folder = fc.models_dir()
    os.makedirs(folder, exist_ok=True)
    shutil.copy(release.st_path, os.path.join(folder, "fastcomposer.safetensors"))
    shutil.copy(release.bin_path, os.path.join(folder, "pytorch_model.bin"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def tilers(monkeypatch):
    """Every TiledDenoiser Any-Size Diffusion's WebUI code creates, with its call history kept."""
    import lib_freediff.webui.asd as asd_glue
    from lib_freediff.asd.fstd import TiledDenoiser

    made = []

    class Recording(TiledDenoiser):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.history = []
            made.append(self)

    monkeypatch.setattr(asd_glue, "TiledDenoiser", Recording)
    return made


@pytest.fixture
def presets_dir(tmp_path, monkeypatch):
    folder = tmp_path / "presets"
    monkeypatch.setenv("FREEDIFF_PRESETS_DIR", str(folder))
    return folder


def pytest_configure(config):
    # tests/test_api_stack.py reruns the API tests under anyio 3: make sure that leg really has it
    expect = os.environ.get("FREEDIFF_EXPECT_ANYIO")
    if expect:
        import importlib.metadata

        found = importlib.metadata.version("anyio")
        if found.split(".")[0] != expect:
            raise pytest.UsageError(f"FREEDIFF_EXPECT_ANYIO={expect} but anyio {found} is imported")
