"""The `leakage` command line. `main(argv)` is callable from tests; every subcommand prints, the library never does.

The analysis verbs (`eval`, `consistency`, `restart`, `probe`, `patch`, `ablate`, `erase`, `das`, `erasers`,
`precision`, `capacity`, `benchmark`, `audit`) are one table (`ANALYSES`): each is a runner module of `leakage.analysis` whose `Spec` dataclass
gives the verb's flags (`leakage.flags`) and whose `run(spec, out)` does the work and writes the files; this
module only prints. A verb's flags are built when that verb runs, so `leakage --help` imports no model code.
"""

from __future__ import annotations

import argparse
import math
import importlib
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable

from leakage.config import EVICTION_PRESETS, EvictionConfig
from leakage.flags import add_flags, from_flags
from leakage.pipeline.cli import add_data_commands
from leakage.reproduce import ReproduceConfig
from leakage.training.tasks import TRAINING_SHORT_BLOCK_RATE, TaskConfig


def _demo(args: argparse.Namespace) -> int:
    """Build the toy model, render a 2-block trace, show spans and mask, check HF == bridge == nnsight."""
    import torch

    from leakage import MementoTrace, additive_mask, build_model, format_mask, memento_mask, parse_spans
    from leakage.engine.views import to_bridge, to_nnsight

    model, tokenizer = build_model(args.preset, seed=args.seed)
    trace = MementoTrace(prompt="sum", blocks=[("1 2", "3"), ("4", "7")], answer="7")
    ids = trace.to_ids(tokenizer)
    spans = parse_spans(ids, tokenizer)
    print(f"model: preset {args.preset!r}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"vocab {len(tokenizer)}")
    print(f"trace text: {trace.to_text()}")
    print(f"token ids:  {ids}")
    for block in spans.blocks:
        print(f"block {block.index}: <|block_start|> at {block.block_start}, <|block_end|> at {block.block_end}, "
              f"summary {block.summary_start}..{block.summary_end}")
    config = from_flags(EvictionConfig, args)
    mask = memento_mask(ids, tokenizer, eviction=config)
    print(f"\nmemento mask ({config}):")
    print(format_mask(mask, spans))

    batch = torch.tensor([ids])
    attention = additive_mask(mask)  # HF eager attention adds 4D masks to the scores: use the additive form
    with torch.no_grad():
        hf_logits = model(batch, attention_mask=attention).logits
        causal_logits = model(batch).logits
        view = to_nnsight(model)
        with view.trace(batch, attention_mask=attention):
            nnsight_logits = view.output.logits.save()
        bridge_logits = to_bridge(model)(batch, attention_mask=attention)  # last: bridging swaps attention modules
    print("\nmax |logit difference| with the memento mask:")
    print(f"  HF vs TransformerLens bridge: {(hf_logits - bridge_logits).abs().max().item():.2e}")
    print(f"  HF vs nnsight:                {(hf_logits - nnsight_logits).abs().max().item():.2e}")
    print(f"  masked vs plain causal (must differ after block 0's memento): "
          f"{(hf_logits - causal_logits).abs().max().item():.2e}")
    return 0


def _selfcheck(args: argparse.Namespace) -> int:
    """The parity table of `leakage.analysis.selfcheck`; exit code 1 when a check fails."""
    import pandas as pd

    from leakage.analysis.selfcheck import SelfcheckSpec, selfcheck

    spec = from_flags(SelfcheckSpec, args)
    rows = selfcheck(spec)
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.2e"))
    failed = sum(not row["passed"] for row in rows)
    print(f"{len(rows) - failed} of {len(rows)} checks passed at {spec.precision} on {spec.device} "
          f"({'checkpoint ' + spec.checkpoint if spec.checkpoint else 'a fresh ' + spec.model_preset + ' model'})")
    return 1 if failed else 0


def _encode_text(tokenizer, text: str, flag: str) -> list[int]:
    """Token ids of a command-line text; words the tokenizer does not know are an error, not `<unk>`."""
    from leakage.memento.trace import unknown_words

    ids = tokenizer.encode(text, add_special_tokens=False)
    bad = unknown_words(tokenizer, text, ids)
    if bad:
        raise ValueError(f"{flag}: words not in the model's vocabulary: {bad[:5]}")
    return ids


def _marked(ids: list[int], tokenizer, prompt_len: int) -> str:
    """The decoded sequence with its prompt, blocks, mementos and answer on labelled lines."""
    from leakage.memento.spans import MarkerIds, SpanKind, parse_spans

    spans = parse_spans(ids, tokenizer, prompt_len=prompt_len, plain_prompt=False, strict=False)
    markers = MarkerIds.from_tokenizer(tokenizer).all_ids
    labels = {SpanKind.PROMPT: "prompt", SpanKind.BLOCK: "block", SpanKind.MEMENTO: "memento",
              SpanKind.ANSWER: "answer", SpanKind.OTHER: "outside"}
    segments: list[tuple[str, list[int]]] = []  # (label, token ids), consecutive positions merged
    for position, (token_id, kind, block) in enumerate(zip(ids, spans.kinds, spans.block_index)):
        if kind not in labels or (token_id in markers and position >= prompt_len):
            continue  # the format markers themselves
        label = labels[kind] + (f" {block}" if block >= 0 else "")
        if segments and segments[-1][0] == label:
            segments[-1][1].append(token_id)
        else:
            segments.append((label, [token_id]))
    return "\n".join(f"  [{label:>10}] {tokenizer.decode(seg)}" for label, seg in segments)


def _decode(args: argparse.Namespace) -> int:
    """Decode (or teacher-force) with block eviction; print the marked trace and the KV summary."""
    from leakage.engine.decode import generate, teacher_force
    from leakage.memento.kv import kv_bytes_per_token_of, simulate_kv

    from leakage.engine.model import build_model, load_checkpoint

    model, tokenizer = load_checkpoint(args.checkpoint) if args.checkpoint else build_model(args.preset, seed=args.seed)
    config = from_flags(EvictionConfig, args)
    prompt = _encode_text(tokenizer, args.prompt, "--prompt")
    if not prompt:
        raise ValueError("--prompt is empty: there is nothing to decode from")
    if args.teacher_force is not None:
        ids = prompt + _encode_text(tokenizer, args.teacher_force, "--teacher-force")
        seq = teacher_force(model, tokenizer, ids, config, prompt_len=len(prompt)).sequences[0]
    else:
        seq = generate(model, tokenizer, prompt, config, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed).sequences[0]
    print(_marked(seq.ids, tokenizer, seq.prompt_len))
    for position, problem in seq.malformed:
        print(f"  malformed at position {position}: {problem}")
    vanilla = simulate_kv(seq.ids[:len(seq.kv.cached_tokens)], tokenizer, EVICTION_PRESETS["vanilla"],
                          prompt_len=seq.prompt_len, plain_prompt=False, strict=False)
    per_token = kv_bytes_per_token_of(model.config, bytes_per_value=2)
    print(f"\nKV cache ({config}):")
    print(f"  memento: peak {seq.kv.peak} tokens ({seq.kv.peak_bytes(per_token):,} bytes bf16), AUC {seq.kv.auc:,}")
    print(f"  vanilla: peak {vanilla.peak} tokens ({vanilla.peak_bytes(per_token):,} bytes bf16), AUC {vanilla.auc:,}")
    if seq.kv.peak:
        print(f"  peak ratio {vanilla.peak / seq.kv.peak:.2f}x, AUC ratio {vanilla.auc / max(seq.kv.auc, 1):.2f}x")
    if args.plot:
        from leakage.plotting import plot_kv_sawtooth

        path = plot_kv_sawtooth({"vanilla": vanilla, "memento": seq.kv}, args.plot,
                                title=f"KV cache during decoding ({len(seq.response)} tokens)")
        print(f"wrote {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    """Two-stage Memento SFT of a synthetic task (see leakage.training.train)."""
    import time

    from dataclasses import replace

    from leakage.training.train import RunConfig, train, train_preset, with_steps

    preset = with_steps(train_preset(args.preset), args.stage1_steps, args.stage2_steps)
    if args.model_preset:
        preset = replace(preset, model_preset=args.model_preset)
    stages = tuple(int(s) for s in args.stages.split(","))
    if not stages or any(s not in (1, 2) for s in stages) or list(stages) != sorted(set(stages)):
        raise ValueError(f"--stages must be '1,2', '1' or '2', got {args.stages!r}")
    run = RunConfig(task=from_flags(TaskConfig, args), preset=preset, stages=stages,
                    eviction=from_flags(EvictionConfig, args), seed=args.seed)
    start = time.perf_counter()
    final = train(run, args.out, resume=args.resume, overwrite=args.overwrite)
    print(f"trained {args.task} ({args.preset}) in {time.perf_counter() - start:.0f} s; final model: {final}")
    return 0


def _rl(args: argparse.Namespace) -> int:
    """CISPO from an SFT run, then the before/after analysis (leakage.training.rl, leakage.analysis.rl_analysis)."""
    import json
    import os
    from pathlib import Path

    from leakage.analysis import rl_analysis
    from leakage.analysis.probe import probe_preset
    from leakage.analysis.record import check_outputs, write_record
    from leakage.training.rl import RLConfig, rl_train

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func: documented in leakage.training.rl
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)  # TRL, per step
    config = from_flags(RLConfig, args)
    out = Path(args.out)
    if args.analysis:  # refuse a bad output before hours of training
        check_outputs(out / "analysis", rl_analysis.FILES, [args.source])
        check_outputs(args.report, rl_analysis.FILES, [args.source, out])
    final = rl_train(config, args.source, out, resume=args.resume, overwrite=args.overwrite)
    train_seconds = json.loads((out / "done.json").read_text(encoding="utf-8"))["wall_seconds"]
    print(f"RL ({config.task}, {config.preset}) in {train_seconds:.0f} s; final model: {final}")
    if not args.analysis:
        return 0
    spec = rl_analysis.RLAnalysisSpec(str(out), probe=probe_preset("smoke" if config.preset == "smoke" else "mlp"))
    record = rl_analysis.run(spec, out / "analysis", command="leakage rl " + " ".join(args.argv), log=print)
    rows, samples = record.rows, config.plan.eval_samples
    shown = rows[~rows["metric"].str.startswith("maj@") | rows["metric"].isin(["maj@1", f"maj@{samples}"])]
    print(shown.pivot(index="metric", columns="checkpoint", values="value")[["before", "after", "after_minus_before"]]
          .to_string(float_format="%.3f", na_rep=""))
    print(f"analysis {record.seconds:.0f} s; wrote {out / 'analysis.json'}")
    if args.report:
        written = write_record(record, args.report, rl_analysis.files)
        print("wrote " + ", ".join(map(str, written)))
    return 0


# -- the analysis verbs: printing their records ------------------------------------------------------------

def _show_accuracies(record) -> None:
    """One line per accuracy of an evaluation, with its 95% interval and counts."""
    results = record.results
    for key, value in results.items():
        if isinstance(value, dict) and "accuracy" in value:
            print(f"  {key:>30}: {value['accuracy']:6.1%}  [{value['ci95_low']:.1%}, {value['ci95_high']:.1%}]"
                  f"  ({value['correct']}/{value['total']})")
    if "chance" in results:
        print(f"  {'chance':>30}: {results['chance']:6.1%}")
    if "text_only_bayes_optimal" in results:
        print(f"  {'memento text alone (best)':>30}: {results['text_only_bayes_optimal']:6.1%}")


def _show_consistency(record) -> None:
    report = record.results
    print(f"{report['sequences']} sequences, {report['tokens']} tokens; engine timing vs summary_end_sees_block:")
    timing = report["timing"]
    print(f"  {'part':>14} {'positions':>9} {'max|dlogit|':>12} {'mean KL':>9} {'argmax chg':>10} "
          f"{'max|dK|':>9} {'max|dV|':>9}")
    for part, stats in timing["max_abs_logit_diff"].items():
        print(f"  {part:>14} {stats['positions']:>9} {stats['max']:>12.4f} "
              f"{timing['kl_engine_to_summary_end_sees_block'][part]['mean']:>9.4f} "
              f"{timing['argmax_changed'][part]['mean']:>10.1%} {timing['max_abs_key_diff'][part]['max']:>9.4f} "
              f"{timing['max_abs_value_diff'][part]['max']:>9.4f}")
    for name, gaps in report["engine"].items():
        print(f"eviction decoding vs masked forward ({name}): max |dlogit| "
              f"{gaps['max_abs_logit_diff_decoder_vs_masked_forward']:.1e}, max |dKV| "
              f"{gaps['max_abs_kv_diff_decoder_vs_masked_forward']:.1e}")


def _show_restart(record) -> None:
    from leakage.training.tasks import unit

    report = record.results
    noun = unit(report["scored_unit"]).noun
    for name in ("memento", "restart"):
        r = report[name]
        print(f"{name:8s} {r['accuracy']:.3f} [{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]  ({r['total']} {noun}s)")
    low, high = report["drop_ci95"]
    print(f"drop     {report['drop']:+.3f} [{low:+.3f}, {high:+.3f}] (bootstrap over examples); examples "
          f"{report['paired_examples']}; sign test over examples p = {report['sign_test_p']:.2g}")


def _show_probe(record) -> None:
    import pandas as pd

    shown = record.rows[["condition", "distance", "site", "layer", "accuracy", "ci95_low", "ci95_high", "paper_toy"]]
    with pd.option_context("display.width", 200, "display.max_rows", 300, "display.precision", 3):
        print(shown.to_string(index=False))
    print(f"{record.results['n_traces']} traces, {len(record.rows)} probes in {record.seconds:.0f} s")


def _show_das(record) -> None:
    frame = record.rows
    das = frame[frame.experiment.isin(["reference", "das"]) & (frame.pairs == "val")]
    print(das[["experiment", "intervention", "layer", "kv_head", "which", "site", "k", "value", "ci95_low",
               "ci95_high"]].to_string(index=False, float_format="%.3f"))
    rest = frame[frame.experiment.isin(["placebo", "graft", "angle"])]
    if len(rest):
        print(rest[["experiment", "intervention", "measure", "value", "ci95_low", "ci95_high"]].to_string(
            index=False, float_format="%.3f"))


def _show_audit(record) -> None:
    """The audit's two numbers, with their intervals, in words."""
    a, spec = record.results["audit"], record.spec
    budget = "Memento's budget" if spec.budget is None else f"budget {spec.budget:g} of the positions"
    print(f"method {spec.method} ({budget}; KV kept {a['kv_auc_share']:.0%} of full attention's)")
    print(f"  bits of the evicted span recoverable from retained KV: {a['bits_recoverable']:.2f} per passcode "
          f"[{a['bits_low']:.2f}, {a['bits_high']:.2f}] (MLP probe, {a['probe_budget']} training traces; "
          f"{spec.task.passcode_digits * math.log2(10):.1f} bits = the whole passcode)")
    print(f"  answer accuracy on the evicted secret: {a['answer_accuracy']:.1%} [{a['answer_low']:.1%}, "
          f"{a['answer_high']:.1%}] (chance 10%; restart, the text without the channel: "
          f"{a['restart_answer_accuracy']:.1%})")
    print(f"  passcode entries still cached at the answer: {a['passcode_retained']:.1%}; of the entries the probe reads "
          f"(the passcode block's delimiters and memento): {a['nearest_retained']:.1%}")


def _show_table(columns: list[str], select: Callable | None = None):
    """A printer of a record's rows (those `select` picks): `columns`, those of them the rows have."""
    def show(record) -> None:
        frame = record.rows if select is None else record.rows[select(record.rows)]
        print(frame[[c for c in columns if c in frame]].to_string(index=False, float_format="%.3f"))
    return show


def _show_patch(record) -> None:
    frame = record.rows
    print(frame[frame.experiment == "reference"][["source", "measure", "answer_digit", "metric", "metric_low",
                                                  "metric_high"]].to_string(index=False, float_format="%.3f"))
    _show_table(["which", "layer", "kv_head", "effect", "effect_low", "effect_high"],
                lambda f: f.experiment == "patch_layer_head")(record)


@dataclass(frozen=True)
class Analysis:
    """An analysis verb: its runner (`leakage.analysis.<module>`, with `run` and the spec class `spec`), how
    the spec's fields become flags (`leakage.flags.add_flags`), and how its record is printed."""

    module: str
    spec: str
    help: str
    show: Callable
    skip: tuple[str, ...] = ()
    rename: dict = field(default_factory=dict)
    options: tuple[str, ...] = ()
    progress: bool = False


_TASK_NO_CURRICULUM = ("task.short_block_rate",)
_BLOCKS = {"task.n_blocks": "blocks"}
ANALYSES: dict[str, Analysis] = {
    "eval": Analysis("evaluation", "EvaluationSpec", "task accuracy under memento / restart / full-attention decoding",
                     _show_accuracies, _TASK_NO_CURRICULUM + ("eviction.restart", "eviction.max_block_tokens",
                                                              "evaluations"), _BLOCKS, options=("checkpoint",)),
    "consistency": Analysis("consistency", "ConsistencySpec", "logit/KV differences between eviction timings, and "
                            "eviction decoding vs the masked forward, for a checkpoint", _show_consistency,
                            _TASK_NO_CURRICULUM + ("eviction.summary_end_sees_block", "eviction.max_block_tokens"),
                            _BLOCKS),
    "restart": Analysis("restart", "RestartSpec", "restart ablation with the memento text held identical (paired over "
                        "examples, exact sign test)", _show_restart,
                        _TASK_NO_CURRICULUM + ("eviction.restart", "eviction.max_block_tokens"), _BLOCKS),
    "probe": Analysis("probing", "ProbeSpec", "passcode probe on retained keys/values: conditions, controls, layers",
                      _show_probe, ("eviction.restart", "eviction.max_block_tokens", "eviction.summary_end_sees_block"),
                      {"experiment.n_blocks": "blocks"}),
    "patch": Analysis("patch_maps", "CausalSpec", "activation patching of the retained KV: layer x head / position "
                      "kind maps", _show_patch, ("task.short_block_rate", "task.passcode_blocks", "eviction.restart",
                                                 "eviction.max_block_tokens"), _BLOCKS, progress=True),
    "ablate": Analysis("ablation", "CausalSpec", "KV ablation sweep of retained positions: resample, mean, restart, "
                       "zero", _show_table(["source", "layer", "metric", "metric_low", "metric_high", "restart_share"],
                                           lambda f: f.experiment == "ablate_layer"),
                       ("task.short_block_rate", "task.passcode_blocks", "eviction.restart",
                        "eviction.max_block_tokens"), _BLOCKS, progress=True),
    "erase": Analysis("erasure", "CausalSpec", "LEACE erasure of the passcode from the retained KV vs a random "
                      "subspace", _show_table(["method", "strength", "probe_accuracy", "answer_accuracy", "answer_low",
                                               "answer_high"]),
                      ("task.short_block_rate", "task.passcode_blocks", "eviction.restart",
                       "eviction.max_block_tokens"), _BLOCKS),
    "das": Analysis("das", "DasSpec", "distributed alignment search on the retained KV: interchange accuracy vs "
                    "subspace size per layer x KV head, placebos, grafts onto restart KV, probe/LEACE angles",
                    _show_das, ("task.short_block_rate", "task.passcode_blocks", "eviction.restart",
                                "eviction.max_block_tokens"), _BLOCKS, progress=True),
    "erasers": Analysis("erasers", "ErasersSpec", "every way to remove the channel on one curve: LEACE, random "
                        "subspace, DAS-subspace ablation, mean, resample, restart, a learned replacement; passcode "
                        "answer and probe vs running sums",
                        _show_table(["eraser", "answer_accuracy", "sums_accuracy", "probe_accuracy", "probe_bits",
                                     "probe_budget"], lambda f: f.experiment == "eraser"),
                        ("task.short_block_rate", "task.passcode_blocks", "eviction.restart",
                         "eviction.max_block_tokens"), _BLOCKS, progress=True),
    "precision": Analysis("precision_channel", "PrecisionSpec", "the passcode channel at each compute / stored-KV "
                          "precision: answer under memento and restart, probes and bits, patching on twins",
                          _show_table(["precision", "measure", "budget", "accuracy", "effect", "ci95_low", "ci95_high",
                                       "points"]),
                          _TASK_NO_CURRICULUM + ("task.passcode_blocks", "eviction.restart",
                                                 "eviction.max_block_tokens"), _BLOCKS),
    "capacity": Analysis("capacity", "CapacitySpec", "the channel's capacity against distance: answer accuracy and "
                         "bits of passcode models", _show_table(["run", "distance", "decoding", "accuracy", "ci95_low",
                                                                 "ci95_high", "bits"]),
                         ("eviction.restart", "eviction.max_block_tokens")),
    "benchmark": Analysis("benchmark", "BenchmarkSpec", "one leakage benchmark across eviction methods (memento, "
                          "restart, full, kvpress presses at Memento's moments and budget): answer, running sums, "
                          "probe bits, KV", _show_table(["method", "answer_accuracy", "answer_over_restart",
                                                         "sums_accuracy", "probe_accuracy", "probe_bits",
                                                         "passcode_retained", "nearest_retained",
                                                         "kv_auc_share"]),
                          _TASK_NO_CURRICULUM + ("task.passcode_blocks", "eviction.restart",
                                                 "eviction.max_block_tokens"), _BLOCKS),
    "audit": Analysis("audit", "AuditSpec", "how much of an evicted passcode a method leaves recoverable from the "
                      "retained KV (bits) and used (answer accuracy), with intervals", _show_audit,
                      _TASK_NO_CURRICULUM + ("task.passcode_blocks", "eviction.restart", "eviction.max_block_tokens",
                                             "methods"), _BLOCKS),
}


def _analysis_flags(parser: argparse.ArgumentParser, verb: str) -> None:
    analysis = ANALYSES[verb]
    spec = getattr(importlib.import_module(f"leakage.analysis.{analysis.module}"), analysis.spec)
    add_flags(parser, spec, skip=analysis.skip, rename=analysis.rename, options=analysis.options)
    parser.add_argument("--out", help="write the results at this path stem: STEM.csv, STEM.json and its figures "
                                      "(a .csv or .json suffix is dropped)")


def _analysis(args: argparse.Namespace) -> int:
    """Run an analysis verb's runner on the spec its flags give, print its record (under `torchrun`, every
    rank runs it and rank 0 prints and writes: `leakage.shards`)."""
    from leakage import shards

    analysis = ANALYSES[args.command]
    module = importlib.import_module(f"leakage.analysis.{analysis.module}")
    spec = from_flags(getattr(module, analysis.spec), args)
    speaks = shards.rank() == 0
    extra = {}
    if analysis.progress and speaks:
        from tqdm import tqdm

        extra["progress"] = tqdm
    record = module.run(spec, args.out, command=f"leakage {args.command} " + " ".join(args.argv),
                        log=print if speaks else lambda _: None, **extra)
    if not speaks:
        return 0
    analysis.show(record)
    print(f"{args.command}: {record.seconds:.0f} s")
    if record.files:
        print("wrote " + ", ".join(map(str, record.files)))
    return 0


def _rl_flags(parser: argparse.ArgumentParser) -> None:
    from leakage.training.rl import RLConfig

    add_flags(parser, RLConfig)


def _reproduce(args: argparse.Namespace) -> int:
    """The main job: train or reuse the toy model, measure the leak, write REPORT.md (leakage.reproduce)."""
    import time

    from tqdm import tqdm

    from leakage.reproduce import ReproduceConfig, reproduce

    config = from_flags(ReproduceConfig, args)
    start = time.perf_counter()
    records = reproduce(config, progress=lambda items, desc: tqdm(items, desc=desc), log=print)
    runs = records if config.seeds > 1 else {config.seed: records}
    failed = [f"seed {seed} {name}" for seed, stages in runs.items() for name, record in stages.items()
              if "error" in record]
    total = sum(len(stages) for stages in runs.values())
    print(f"\n{total - len(failed)} of {total} stages ok in {time.perf_counter() - start:.0f} s"
          + (f"; failed: {', '.join(failed)} (see the stages/ records)" if failed else ""))
    print(f"wrote {config.out}/" + ("SEEDS.md and seeds.csv" if config.seeds > 1 else "REPORT.md"))
    return 1 if failed else 0


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; the flags of the verbs whose specs need model code (the analyses, `rl`) are added only
    for `verb` (all of them when `verb` is "all")."""
    parser = argparse.ArgumentParser(prog="leakage", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="end-to-end check of trace format, memento mask and the three model views")
    demo.add_argument("--preset", default="tiny", help="model preset (tiny, small)")
    demo.add_argument("--seed", type=int, default=0)
    add_flags(demo, EvictionConfig, skip=("max_block_tokens",))
    demo.set_defaults(func=_demo)

    decode = sub.add_parser("decode", help="decode with block eviction; print the marked trace and KV summary")
    decode.add_argument("--checkpoint", help="local HF checkpoint directory (default: a fresh --preset model)")
    decode.add_argument("--preset", default="tiny")
    decode.add_argument("--prompt", required=True, help="prompt text (e.g. 'what is the sum ? <think>')")
    decode.add_argument("--teacher-force", metavar="TEXT", help="feed this response instead of sampling one")
    decode.add_argument("--max-new-tokens", type=int, default=256)
    add_flags(decode, EvictionConfig)
    decode.add_argument("--temperature", type=float, default=0.0)
    decode.add_argument("--top-k", type=int)
    decode.add_argument("--top-p", type=float)
    decode.add_argument("--seed", type=int, default=0)
    decode.add_argument("--plot", metavar="PNG", help="write the KV sawtooth figure here")
    decode.set_defaults(func=_decode)

    train = sub.add_parser("train", help="two-stage Memento SFT on a synthetic task (torchrun-ready)")
    train.add_argument("--preset", default="fast", help="smoke, fast, fast-bf16 (fast in bf16 mixed precision), fast-v3 / "
                       "fast-v2 / fast-v1 (earlier recipes: docs/training.md) or paper (TRAIN_PRESETS)")
    train.add_argument("--out", required=True, help="run folder, e.g. runs/digits-fast")
    train.add_argument("--stages", default="1,2", help="'1,2' (default), '2' (memento mask only) or '1'")
    train.add_argument("--stage1-steps", type=int)
    train.add_argument("--stage2-steps", type=int)
    train.add_argument("--model-preset", help="tiny or small (default: the training preset's)")
    add_flags(train, TaskConfig, rename={"n_blocks": "blocks"},
              defaults={"short_block_rate": TRAINING_SHORT_BLOCK_RATE})  # the curriculum (docs/results.md)
    add_flags(train, EvictionConfig, skip=("max_block_tokens",))
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out (its run files only)")
    train.set_defaults(func=_train)

    rl = sub.add_parser("rl", help="CISPO RL on block-masked rollouts (TRL GRPOTrainer), then before/after analysis")
    rl.add_argument("--from", dest="source", required=True,
                    help="the SFT run folder (runs/NAME: final/ and config.json) or a checkpoint directory")
    rl.add_argument("--out", required=True, help="RL run folder, e.g. runs/NAME-rl")
    if verb in ("rl", "all"):
        _rl_flags(rl)
    rl.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    rl.add_argument("--overwrite", action="store_true", help="replace the RL run in --out (its run files only)")
    rl.add_argument("--analysis", action=argparse.BooleanOptionalAction, default=True,
                    help="measure before/after RL (accuracy, maj@k, KV, probe, restart drop) into --out/analysis.json")
    rl.add_argument("--report", help="also write the analysis as CSV/JSON/PNG (and the metrics JSONL) at this "
                                     "path stem, e.g. figures/rl_digits_fast")
    rl.set_defaults(func=_rl)

    for name, analysis in ANALYSES.items():
        command = sub.add_parser(name, help=analysis.help)
        if verb in (name, "all"):
            _analysis_flags(command, name)
        command.set_defaults(func=_analysis)

    check = sub.add_parser("selfcheck", help="parity checks before trusting numbers at a precision: HF == bridge "
                           "== nnsight, eviction decoding == masked forward, capture == decoder cache, patch "
                           "nothing == clean")
    if verb in ("selfcheck", "all"):
        from leakage.analysis.selfcheck import SelfcheckSpec

        add_flags(check, SelfcheckSpec)
    check.set_defaults(func=_selfcheck)

    repro = sub.add_parser("reproduce", help="the main job: train the toy model, measure the leak, write REPORT.md")
    add_flags(repro, ReproduceConfig)
    repro.set_defaults(func=_reproduce)

    add_data_commands(sub)
    return parser


def _user_error(err: BaseException) -> bool:
    """Errors the user can fix (bad input, refused requests, failed services), printed as one line."""
    from leakage.errors import UserError

    return isinstance(err, (UserError, ValueError, KeyError, OSError))


def _verb(argv: list[str]) -> str | None:
    """The subcommand of an argument list (its first argument that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors the user can fix print one line naming what and where, exit code 2;
    `--debug` shows their traceback. Anything else is a bug and keeps its traceback. The library's
    warnings (a checkpoint never trained on the format, ...) print as one line on stderr."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_verb(argv))
    args = parser.parse_args(argv)
    args.argv = [a for a in argv if a != "--debug"][1:]  # the subcommand's arguments, for the command in results
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = _show_warning
            return args.func(args)
    except Exception as err:
        if args.debug or not _user_error(err):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        command = " ".join(c for c in (args.command, getattr(args, "data_command", None)) if c)
        print(f"leakage {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
