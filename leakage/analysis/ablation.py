"""`leakage ablate`: the answer when the retained KV of a layer (or layer x KV head, or every layer) is
replaced by an ablation's KV.

An ablation kind is one entry of `ABLATIONS`: a function (model, tokenizer, examples, run, eviction) ->
the replacement KV of the run's prefix (`leakage.analysis.patching.KV`, the shape of `run.target`):

* `resample`: the twin's KV (same memento text, other block content: `leakage.analysis.twins`);
* `mean`: the batch mean at each (layer, head, position);
* `restart`: the same tokens' KV recomputed without the block (the restart ablation, spliced per layer);
* `zero`: zeros (a contrast only: zeroing KV breaks models for reasons unrelated to content).

`ablation_sweep` scores answer digit accuracy for each kind; `restart_share` is a layer's drop over the
all-layer restart drop.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from leakage.analysis.patching import (KV, PatchResult, PatchRun, answer_correct, kv_patch_layer, kv_patch_layer_head,
                                       patched_logits)
from leakage.analysis.record import Clock, Log, Record, beside, check_outputs, finish, finite_or_none
from leakage.analysis.twins import (CausalSpec, Progress, load_causal_model, passcode_run, result_frame, run_name,
                                    twin_run)
from leakage.config import EvictionConfig
from leakage.engine.model import check_trained_task
from leakage.training.tasks import Example

Ablation = Callable[[object, object, list[Example], PatchRun, EvictionConfig], KV]


def resample(model, tokenizer, examples: list[Example], run: PatchRun, eviction: EvictionConfig) -> KV:
    """The twin's KV: the same memento text, computed with another passcode in view."""
    return run.source


def mean(model, tokenizer, examples: list[Example], run: PatchRun, eviction: EvictionConfig) -> KV:
    """Every example's prefix replaced by the batch mean at each (layer, head, position)."""
    kv = run.target
    return KV(kv.keys.mean(0, keepdim=True).expand_as(kv.keys).clone(),
              kv.values.mean(0, keepdim=True).expand_as(kv.values).clone())


def restart(model, tokenizer, examples: list[Example], run: PatchRun, eviction: EvictionConfig) -> KV:
    """The same tokens' KV under restart decoding: every memento recomputed without its block."""
    return passcode_run(model, tokenizer, examples, [e.ids for e in examples], [e.passcode_digits for e in examples],
                        eviction, source_eviction=replace(eviction, restart=True)).source


def zero(model, tokenizer, examples: list[Example], run: PatchRun, eviction: EvictionConfig) -> KV:
    """Zero keys and values (a contrast only)."""
    return KV(torch.zeros_like(run.target.keys), torch.zeros_like(run.target.values))


ABLATIONS: dict[str, Ablation] = {"resample": resample, "mean": mean, "restart": restart, "zero": zero}
"""Every ablation kind, in the order the sweep runs them (module docstring)."""


def ablation_sweep(model, tokenizer, examples: list[Example], run: PatchRun, eviction: EvictionConfig,
                   bootstrap: int = 1000, seed: int = 0, progress: Progress = None) -> pd.DataFrame:
    """Answer digit accuracy with the held KV of each layer, each layer x head, and all layers replaced
    by each ablation kind; `restart_share`: the layer's drop over the all-layer restart drop."""
    clean = answer_correct(patched_logits(model, run, run.target), run)
    frames = []
    for name, ablation in ABLATIONS.items():
        source = ablation(model, tokenizer, examples, run, eviction)
        ablated = run.with_source(source)
        everything = answer_correct(patched_logits(model, ablated, source), ablated)
        for variant, label in ((kv_patch_layer, "layer"), (kv_patch_layer_head, "layer_head")):
            result = variant(model, ablated, metric=answer_correct, progress=progress)
            frames.append(result_frame(result, f"ablate_{label}", name, bootstrap=bootstrap, seed=seed))
        every = PatchResult(everything[None], ("layer",), (["all"],), "both")
        frames.append(result_frame(every, "ablate_layer", name, bootstrap=bootstrap, seed=seed))
    frame = pd.concat(frames, ignore_index=True)
    frame["clean"] = float(clean.mean())
    restart_all = frame[(frame.source == "restart") & (frame.layer == "all")].metric.iloc[0]
    frame["restart_share"] = (frame.clean - frame.metric) / (frame.clean - restart_all)
    return frame


def headline(frame: pd.DataFrame) -> dict:
    """Clean accuracy, and per ablation kind and layer (or "all") the accuracy, its interval and the
    share of the all-layer restart drop (None where there is no restart drop to share)."""
    layers = frame[frame.experiment == "ablate_layer"]
    return {"clean": float(frame.clean.iloc[0]),
            "by_layer": {f"{r.source}/{r.layer}": {"accuracy": float(r.metric), "ci95_low": float(r.metric_low),
                                                   "ci95_high": float(r.metric_high),
                                                   "restart_share": finite_or_none(r.restart_share)}
                         for r in layers.itertuples()}}


FILES = (".csv", ".json", ".png")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: CausalSpec, out: str | Path | None = None, *, command: str | None = None, log: Log | None = None,
        progress: Progress = None) -> Record:
    """The ablation sweep of a checkpoint (module docstring); CSV, JSON and a figure at `out`."""
    check_outputs(out, FILES, [spec.checkpoint])
    check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_causal_model(spec)
    examples, pairs = twin_run(model, tokenizer, spec)
    clock(f"ablating {spec.experiment.n} examples")
    frame = ablation_sweep(model, tokenizer, examples, pairs, spec.eviction, spec.experiment.bootstrap,
                           spec.experiment.seed, progress)
    return finish(__name__, spec, headline(frame), frame, clock, command, out, figures)


def figures(record: Record, stem: Path) -> list[Path]:
    """Answer accuracy per layer and ablation kind."""
    from leakage.plotting import plot_ablation

    return [plot_ablation(record.rows, beside(stem, ".png"), f"{run_name(record.spec.checkpoint)}: ablate")]
