import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(1)

from tests.fastcomposer import fixtures  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return fixtures.build_clip_tokenizer(str(tmp_path_factory.mktemp("clip_tokenizer")))


@pytest.fixture(scope="session")
def tokenize(tokenizer):
    def tok(text):
        return tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    return tok


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    """The tiny official-layout checkpoint as .bin and .safetensors."""
    return fixtures.write_tiny_release(str(tmp_path_factory.mktemp("fastcomposer_release")))
