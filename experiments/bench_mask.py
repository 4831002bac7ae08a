"""Time memento-mask construction for long traces (parse + vectorised mask), writing JSON.

    python experiments/bench_mask.py --out figures/bench_mask.json
"""

import platform
import time
from dataclasses import dataclass

import torch

from leakage.flags import parse
from leakage.io import atomic_write_json
from leakage.memento.mask import memento_mask
from leakage.memento.spans import MarkerIds
from leakage.provenance import script_command

MARKERS = MarkerIds(block_start=100, block_end=101, summary_start=102, summary_end=103, think_start=104,
                    think_end=105)


def synthetic_trace(n_tokens: int, block_tokens: int, memento_tokens: int) -> list[int]:
    ids = [1] * 50 + [MARKERS.think_start]
    while len(ids) < n_tokens:
        ids += [MARKERS.block_start, *[2] * block_tokens, MARKERS.block_end,
                MARKERS.summary_start, *[3] * memento_tokens, MARKERS.summary_end]
    return ids[:n_tokens]


@dataclass(frozen=True)
class Options:
    """The benchmark's settings.

    out: the JSON report.
    repeats: timed constructions per trace length (median and minimum).
    """

    out: str = "figures/bench_mask.json"
    repeats: int = 5


def main() -> None:
    args = parse(Options, description=__doc__)
    torch.set_num_threads(2)
    rows = []
    for n_tokens in (1024, 4096, 8192):
        ids = synthetic_trace(n_tokens, block_tokens=300, memento_tokens=30)
        for restart in (False, True):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                memento_mask(ids, MARKERS, keep_last_n_blocks=0, restart=restart)
                times.append(time.perf_counter() - start)
            rows.append({"tokens": n_tokens, "restart": restart, "median_s": sorted(times)[len(times) // 2],
                         "min_s": min(times)})
            print(rows[-1])
    atomic_write_json(args.out, {"command": script_command("experiments/bench_mask.py"),
                                 "machine": platform.processor() or platform.machine(),
                                 "torch_threads": torch.get_num_threads(), "results": rows})


if __name__ == "__main__":
    main()
