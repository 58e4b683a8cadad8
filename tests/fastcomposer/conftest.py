import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenize(tokenizer):
    def tok(text):
        return tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    return tok

