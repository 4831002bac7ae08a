import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of `pytest -n 2`'s workers: one core each, and so their subprocesses
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

OWN_FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
FIXTURE_DIRS = [OWN_FIXTURES] + ([SHARED_FIXTURES] if SHARED_FIXTURES.is_dir() else [])
"""The project's own made-up traces always; the real ones from `../shared/fixtures` too when that folder is
there (an extra: a fresh clone runs every test on its own fixtures, and skips nothing)."""


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session", params=FIXTURE_DIRS, ids=lambda path: "own" if path == OWN_FIXTURES else "shared")
def fixtures_dir(request) -> Path:
    """A folder of traces: `openthoughts_example_trace.jsonl` (raw chain of thought) and
    `memento_example_{response,code,science}.json` (OpenMementos records)."""
    return request.param
