"""Capture sharded over processes (`torchrun`, gloo on CPU): each rank captures its share of the batches,
and the dataset every rank gets is bit-identical to one process's."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(processes: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
           f"--master_port={_free_port()}", *args]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_capture_their_shares_and_gather_the_single_process_dataset(tmp_path, monkeypatch):
    from tests import shard_capture

    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    try:  # one process: this one (no torchrun), with the script's single thread
        shard_capture.main(tmp_path / "world1")
    finally:
        torch.set_num_threads(threads)
    _torchrun(2, "tests/shard_capture.py", str(tmp_path / "world2"))
    one, two = (load_file(tmp_path / f"world{p}" / "dataset.safetensors") for p in (1, 2))
    assert one.keys() == two.keys() and len(one) > 2
    for name in one:
        assert one[name].dtype == two[name].dtype and one[name].shape == two[name].shape, name
        assert (one[name] == two[name]).all(), f"{name} differs between one process and two"
    shares = [json.loads((tmp_path / "world2" / f"rank{r}.json").read_text())["traces"] for r in (0, 1)]
    assert shares == [48, 22]  # batches of 16: three on rank 0, two (16 + 6) on rank 1
    assert not (tmp_path / "world1" / "rank1.json").exists()
