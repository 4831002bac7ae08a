"""`leakage patch`: where the passcode's twin moves the answer, per layer x KV head and layer x position kind.

The target run is a clean example, the source its twin (`leakage.analysis.twins`); per layer x KV head and
per layer x retained position kind, keys, values or both are patched from the twin at the passcode
block's eviction, and the logit difference (clean digit minus twin digit, averaged over the answer
digits where they differ) is normalised to 0 = clean, 1 = twin. `reference_rows` give the unpatched
run and the fully patched one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from leakage.analysis.patching import (PatchResult, PatchRun, clean_and_corrupted, kv_patch_layer_head,
                                       kv_patch_layer_kind, logit_difference, patched_logits)
from leakage.analysis.record import Clock, Log, Record, beside, check_outputs, finish, finite_or_none
from leakage.analysis.twins import CausalSpec, Progress, load_causal_model, result_frame, run_name, twin_run
from leakage.engine.model import check_trained_task


def reference_rows(model, run: PatchRun, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The unpatched run and the fully patched one (every held entry from the source): the logit
    difference and each answer digit's accuracy, with 95% example-bootstrap intervals."""
    frames = []
    for source, kv in (("clean", run.target), ("twin_cache", run.source)):
        logits = patched_logits(model, run, kv)  # (B, Q, V)
        ld = PatchResult(logit_difference(logits, run)[None], ("answer_digit",), (["all"],), "both")
        digits = (logits.argmax(-1) == run.answer[..., 0]).float().T  # (Q, B)
        accuracy = PatchResult(digits, ("answer_digit",), (list(range(len(run.queries))),), "both")
        for result, measure in ((ld, "logit_difference"), (accuracy, "accuracy")):
            frame = result_frame(result, "reference", source, bootstrap=bootstrap, seed=seed)
            frame.insert(2, "measure", measure)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def patching_maps(model, run: PatchRun, bootstrap: int = 1000, seed: int = 0, progress: Progress = None) -> pd.DataFrame:
    """Normalised logit-difference effects: layer x KV head and layer x position kind; keys, values, both;
    and the reference rows (`reference_rows`)."""
    clean, corrupted = clean_and_corrupted(model, run)
    frames = [reference_rows(model, run, bootstrap, seed)]
    for which in ("keys", "values", "both"):
        for variant, name in ((kv_patch_layer_head, "layer_head"), (kv_patch_layer_kind, "layer_kind")):
            result = variant(model, run, which=which, progress=progress)
            frames.append(result_frame(result, f"patch_{name}", "twin", clean, corrupted, bootstrap, seed))
    return pd.concat(frames, ignore_index=True)


def headline(frame: pd.DataFrame) -> dict:
    """The layer x KV head with the largest effect (keys and values patched), the runner-up's effect, and
    the reference logit differences. An effect is None where it is undefined: the twin's cache moves the
    logit difference not at all (normalised by zero)."""
    maps = frame[(frame.experiment == "patch_layer_head") & (frame.which == "both")].sort_values("effect",
                                                                                                ascending=False)
    top = maps.iloc[0]
    reference = frame[(frame.experiment == "reference") & (frame.measure == "logit_difference")]
    return {"top_layer_head": {"layer": int(top.layer), "kv_head": int(top.kv_head), "effect": finite_or_none(top.effect),
                               "effect_low": finite_or_none(top.effect_low),
                               "effect_high": finite_or_none(top.effect_high)},
            "second_effect": finite_or_none(maps.iloc[1].effect) if len(maps) > 1 else None,
            "logit_difference": {r.source: float(r.metric) for r in reference.itertuples()}}


FILES = (".csv", ".json", ".png")
"""What `run(spec, out)` writes beside the stem `out`."""


def run(spec: CausalSpec, out: str | Path | None = None, *, command: str | None = None, log: Log | None = None,
        progress: Progress = None) -> Record:
    """The patching maps of a checkpoint (module docstring); CSV, JSON and the maps' figure at `out`."""
    check_outputs(out, FILES, [spec.checkpoint])
    check_trained_task(spec.checkpoint, spec.task, spec.force)
    clock = Clock(log)
    model, tokenizer = load_causal_model(spec)
    _, pairs = twin_run(model, tokenizer, spec)
    clock(f"patching {spec.experiment.n} twin pairs")
    frame = patching_maps(model, pairs, spec.experiment.bootstrap, spec.experiment.seed, progress)
    return finish(__name__, spec, headline(frame), frame, clock, command, out, figures)


def figures(record: Record, stem: Path) -> list[Path]:
    """The layer x KV head and layer x position-kind maps."""
    from leakage.plotting import plot_patching

    return [plot_patching(record.rows, beside(stem, ".png"), f"{run_name(record.spec.checkpoint)}: patch")]
