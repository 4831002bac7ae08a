"""Capture a small probe dataset, as many processes as `torchrun` starts, and save it: the script the
sharded-capture test runs under `torchrun --nproc_per_node=1` and `=2`.

    python -m torch.distributed.run --nproc_per_node=2 tests/shard_capture.py OUT_DIR

Rank 0 writes OUT_DIR/dataset.safetensors (every site's keys+values, lengths and text features, the
labels and groups); every rank writes OUT_DIR/rank{r}.json with the traces it captured itself.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from leakage import shards
from leakage.analysis.probe_data import capture_dataset, synthetic_traces
from leakage.analysis.probing import POSITION_KINDS
from leakage.config import EvictionConfig
from leakage.engine.model import build_model
from leakage.training.tasks import TaskConfig

N_TRACES, BATCH = 70, 16  # five batches, the last one short: ranks get 3 and 2


def main(out: Path) -> None:
    torch.set_num_threads(1)
    model, tokenizer = build_model("tiny", seed=0)
    traces = synthetic_traces(TaskConfig(task="passcode", n_blocks=4, passcode_block=1), tokenizer, N_TRACES)
    sites = [("memento", d) for d in (-1, 0, 1, 2)] + [(part, 0) for part in POSITION_KINDS]
    captured = []
    data = capture_dataset(model, tokenizer, traces, EvictionConfig(), sites, batch_size=BATCH,
                           progress=captured.append)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{shards.rank()}.json").write_text(json.dumps({"traces": sum(captured)}))
    if shards.rank() == 0:
        tensors = {"labels": data.labels, "groups": data.groups}
        for name in data.sites:
            tensors |= {f"kv/{name}": data.kv[name], f"lengths/{name}": data.lengths[name],
                        f"text/{name}": data.text[name]}
        save_file({k: v.contiguous() for k, v in tensors.items()}, out / "dataset.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
