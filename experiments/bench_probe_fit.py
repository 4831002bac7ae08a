"""Where one probe fit's time goes: the paper's MLP probe on features shaped like the probe sweep's.

    python experiments/bench_probe_fit.py --out figures/bench_probe_fit.json

The features are synthetic, shaped as the digits sweep's masked d=1 condition (22,000 traces x 1,536 numbers:
3 memento tokens x 4 layers x keys and values of 2 KV heads of 32), with a spectrum falling over nine decades
as real KV's does, and a weak signal planted in one low-variance direction (so the probe trains for a few
epochs, as on real features). For each matrix-product dtype of the probe (`ProbeConfig.matmul_dtype`):
the whole `fit_probe` call, its whitening (the F x F eigendecomposition, computed once and then reused by
`principal_components` for the same rows), its epochs and seconds per optimizer step; and, from one profiled
fit (`torch.profiler`), the operators with the most self CPU time. What it shows: whether a fit is bound by
its matrix products (which a faster dtype would speed up) or by everything around them (dropout's random
numbers, the optimizer's elementwise updates, autograd's bookkeeping).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, replace

import torch

from leakage.analysis import probe
from leakage.flags import parse
from leakage.io import atomic_write_json
from leakage.provenance import script_command


@dataclass(frozen=True)
class Options:
    """The benchmark's settings.

    out: the JSON report.
    rows: feature rows (traces).
    features: numbers per row.
    top_ops: operators listed from the profiled fit.
    threads: torch threads.
    """

    out: str = "figures/bench_probe_fit.json"
    rows: int = 22_000
    features: int = 1_536
    top_ops: int = 12
    threads: int = 2


def sweep_like(rows: int, features: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (rows, features), labels (rows, 5) digits, groups (rows,)): a spectrum over nine decades and the
    first digit planted, weakly, in a direction of standard deviation 1e-4 of the largest."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, features, generator=g) * torch.logspace(0, -9, features)
    labels = torch.randint(0, probe.N_CLASSES, (rows, 5), generator=g)
    x[:, features // 2] += labels[:, 0] * 1e-4
    return x, labels, torch.arange(rows)


def timed_fit(x, labels, groups, config: probe.ProbeConfig) -> dict:
    """One cold fit (no decomposition kept), timed whole and in its whitening."""
    probe.forget_components()
    start = time.perf_counter()
    result = probe.fit_probe(x, labels, groups, config)
    seconds = time.perf_counter() - start
    fit_rows = result.n_train
    start = time.perf_counter()
    probe.principal_components(x[:fit_rows].contiguous())
    whitening = time.perf_counter() - start
    again = time.perf_counter()
    probe.principal_components(x[:fit_rows].contiguous())  # the same rows: reused
    reused = time.perf_counter() - again
    steps = -(-fit_rows // config.batch_size) * (result.epochs + config.patience)
    return {"matmul_dtype": config.matmul_dtype, "fit_seconds": seconds, "accuracy": result.accuracy,
            "best_epoch": result.epochs, "epochs_run": result.epochs + config.patience, "optimizer_steps": steps,
            "whitening_seconds": whitening, "whitening_reused_seconds": reused,
            "seconds_per_step": (seconds - whitening) / steps}


def top_operators(x, labels, groups, config: probe.ProbeConfig, n: int) -> list[dict]:
    """The `n` operators with the most self CPU time in one profiled fit, with their share of the total."""
    probe.forget_components()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiled:
        probe.fit_probe(x, labels, groups, config)
    events = profiled.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [{"op": e.key, "calls": e.count, "self_seconds": e.self_cpu_time_total / 1e6,
             "share": e.self_cpu_time_total / total} for e in ranked]


def main() -> None:
    options = parse(Options, description=__doc__)
    torch.set_num_threads(options.threads)
    x, labels, groups = sweep_like(options.rows, options.features)
    runs = []
    for dtype in ("float32", "bfloat16"):
        config = replace(probe.PROBE_PRESETS["mlp"], matmul_dtype=dtype)
        runs.append({**timed_fit(x, labels, groups, config),
                     "top_operators": top_operators(x, labels, groups, config, options.top_ops)})
        print(f"{dtype}: fit {runs[-1]['fit_seconds']:.1f} s ({runs[-1]['epochs_run']} epochs, "
              f"{1e3 * runs[-1]['seconds_per_step']:.1f} ms per step; whitening {runs[-1]['whitening_seconds']:.2f} s, "
              f"reused {runs[-1]['whitening_reused_seconds']:.2f} s)")
        for op in runs[-1]["top_operators"][:6]:
            print(f"  {op['op']:<40} {op['share']:6.1%}  {op['calls']} calls")
    path = atomic_write_json(options.out, {
        "command": script_command("experiments/bench_probe_fit.py"), "rows": options.rows, "features": options.features,
        "probe": "the paper's MLP (mlp preset), one fit per matmul dtype", "runs": runs,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": options.threads}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
