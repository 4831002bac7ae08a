import pytest

from leakage.engine.model import build_model


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset (random weights): (model, tokenizer)."""
    return build_model("tiny", seed=0)
