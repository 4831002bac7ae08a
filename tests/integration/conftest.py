from dataclasses import replace

import pytest

from leakage.engine.model import build_model
from leakage.training.tasks import TaskConfig
from leakage.training.train import RunConfig, train, train_preset

PASSCODE_TASK = TaskConfig(task="passcode", n_blocks=3, passcode_block=1)


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset (random weights): (model, tokenizer)."""
    return build_model("tiny", seed=0)


@pytest.fixture(scope="session")
def passcode_checkpoint(tmp_path_factory):
    """A briefly trained passcode model (`PASSCODE_TASK`, 40 + 40 steps): the path of its final checkpoint."""
    preset = replace(train_preset("smoke"), stage1_steps=40, stage2_steps=40, batch_size=8, train_examples=640,
                     eval_every=40, save_every=40)
    return train(RunConfig(task=PASSCODE_TASK, preset=preset, seed=0), tmp_path_factory.mktemp("passcode") / "run")
