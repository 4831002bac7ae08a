import contextlib
import shutil
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


REPRODUCE = ["reproduce", "--preset", "smoke", "--out", "out", "--runs-dir", "runs"]
"""The smoke main job, its folders named relative to the working directory (`reproduced`)."""


@pytest.fixture(scope="session")
def smoke_reproduce(tmp_path_factory):
    """A folder holding one finished `REPRODUCE` (`out/`, `runs/`): run once per session, copied by `reproduced`."""
    from leakage.cli import main

    root = tmp_path_factory.mktemp("reproduce")
    with contextlib.chdir(root):
        assert main(REPRODUCE) == 0
    return root


@pytest.fixture
def reproduced(smoke_reproduce, tmp_path, monkeypatch):
    """The test's own copy of a finished smoke main job, in its working directory: `REPRODUCE` again finds every
    stage done (the records name their folders relative to it)."""
    shutil.copytree(smoke_reproduce, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path
