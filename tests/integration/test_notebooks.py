"""Every notebook is a jupytext pair (percent-format .py and an .ipynb stored without outputs) and runs top
to bottom on the smoke preset (models trained in seconds, in a scratch folder)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
SHARED = ROOT.parent / "shared" / "fixtures"
FIXTURES = SHARED if SHARED.is_dir() else ROOT / "tests" / "fixtures"  # the real traces when there, else our own


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One scratch folder for all notebooks, so the smoke models trained by one are reused by the next."""
    return tmp_path_factory.mktemp("notebooks")


def test_there_are_six_notebooks():
    assert [p.stem for p in NOTEBOOKS] == ["01_format_and_masks", "02_eviction_decoding", "03_probing_leakage",
                                           "04_patching_and_ablation", "05_real_traces", "06_rl_cispo"]


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_a_pair_and_runs_on_smoke(script, workdir, monkeypatch):
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    stored = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    assert [c.source for c in stored.cells] == [c.source for c in jupytext.read(script).cells], \
        f"{script.name} and its .ipynb differ: run `jupytext --sync {script}`"
    assert not any(c.get("outputs") or c.get("execution_count") for c in stored.cells if c.cell_type == "code")
    monkeypatch.setenv("LEAKAGE_PRESET", "smoke")
    monkeypatch.setenv("LEAKAGE_FIXTURES", str(FIXTURES))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    NotebookClient(stored, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
