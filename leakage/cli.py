"""The `leakage` command line. `main(argv)` is callable from tests; every subcommand prints, the library never does."""

from __future__ import annotations

import argparse
import sys

from leakage.config import CausalExperiment, EvictionConfig, ProbeExperiment, RLConfig
from leakage.reproduce import ReproduceConfig
from leakage.flags import add_flags, from_flags
from leakage.pipeline.cli import add_data_commands
from leakage.tasks import TASKS, TRAINING_SHORT_BLOCK_RATE, TaskConfig


def _demo(args: argparse.Namespace) -> int:
    """Build the toy model, render a 2-block trace, show spans and mask, check HF == bridge == nnsight."""
    import torch

    from leakage import MementoTrace, additive_mask, build_model, format_mask, memento_mask, parse_spans
    from leakage.views import to_bridge, to_nnsight

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
    mask = memento_mask(ids, tokenizer, config=config)
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


def _load(args: argparse.Namespace):
    from leakage.model import build_model

    if args.checkpoint:
        return _load_checkpoint(args.checkpoint)
    return build_model(args.preset, seed=args.seed)


def _load_checkpoint(path):
    """Load a checkpoint; warn (stderr) when it was never trained on the Memento format, whose markers
    are then added with fresh embeddings, so that its scores are not mistaken for a trained model's."""
    from leakage.model import add_memento_tokens, load_model, missing_memento_tokens
    from leakage.views import architecture_name

    model, tokenizer = load_model(path, add_tokens=False)
    missing = missing_memento_tokens(tokenizer)
    if missing:
        add_memento_tokens(model, tokenizer)
        print(f"warning: {path} ({architecture_name(model)}) has no {', '.join(missing)} in its tokenizer: it was "
              "never trained on the Memento format; the markers were added with fresh embeddings", file=sys.stderr)
    return model, tokenizer


def _encode_text(tokenizer, text: str, flag: str) -> list[int]:
    """Token ids of a command-line text; words the tokenizer does not know are an error, not `<unk>`."""
    from leakage.trace import unknown_words

    ids = tokenizer.encode(text, add_special_tokens=False)
    bad = unknown_words(tokenizer, text, ids)
    if bad:
        raise ValueError(f"{flag}: words not in the model's vocabulary: {bad[:5]}")
    return ids


def _marked(ids: list[int], tokenizer, prompt_len: int) -> str:
    """The decoded sequence with its prompt, blocks, mementos and answer on labelled lines."""
    from leakage.spans import MarkerIds, SpanKind, parse_spans

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
    from leakage.decode import generate, teacher_force
    from leakage.kv import kv_bytes_per_token_of, simulate_kv

    model, tokenizer = _load(args)
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
    vanilla = simulate_kv(seq.ids[:len(seq.kv.cached_tokens)], tokenizer, EvictionConfig(keep_last_n_blocks=-1),
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


def _print_accuracies(results: dict) -> None:
    """One line per accuracy of an `evaluate_checkpoint` result, with its 95% interval and counts."""
    for key, value in results.items():
        if isinstance(value, dict) and "accuracy" in value:
            print(f"  {key:>30}: {value['accuracy']:6.1%}  [{value['ci95_low']:.1%}, {value['ci95_high']:.1%}]"
                  f"  ({value['correct']}/{value['total']})")
    if "chance" in results:
        print(f"  {'chance':>30}: {results['chance']:6.1%}")
        print(f"  {'memento text alone (best)':>30}: {results['text_only_bayes_optimal']:6.1%}")


def _train(args: argparse.Namespace) -> int:
    """Two-stage Memento SFT of a synthetic task (see leakage.train)."""
    import time

    from dataclasses import replace

    from leakage.train import RunConfig, train, train_preset, with_steps

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
    """CISPO from an SFT run, then the before/after analysis (see leakage.rl, leakage.rl_analysis)."""
    import json
    import os
    import time
    import warnings
    from pathlib import Path

    import pandas as pd

    from leakage.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
    from leakage.plotting import plot_rl
    from leakage.probe import ProbeConfig
    from leakage.rl import rl_train, sft_source
    from leakage.rl_analysis import analysis_rows, compare_checkpoints

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func: documented in leakage.rl
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)  # TRL, per step
    config = from_flags(RLConfig, args)
    out = Path(args.out)
    final = rl_train(config, args.source, out, resume=args.resume, overwrite=args.overwrite)
    train_seconds = json.loads((out / "done.json").read_text(encoding="utf-8"))["wall_seconds"]
    print(f"RL ({config.task}, {config.preset}) in {train_seconds:.0f} s; final model: {final}")
    if not args.analysis:
        return 0
    start = time.perf_counter()
    checkpoint, task = sft_source(args.source, config.task)
    plan = config.plan
    probe = ProbeConfig(kind="linear", max_epochs=5) if config.preset == "smoke" else None
    records = compare_checkpoints(checkpoint, final, task, plan.n_eval, plan.eval_samples, plan.probe_traces,
                                  config.temperature, probe=probe, log=print)
    command = "leakage rl " + " ".join(args.argv)
    rows = pd.DataFrame(analysis_rows(records))
    analysis = {"command": command, "from": str(checkpoint), "rl": json.loads(json.dumps(vars(config))),
                "task": json.loads(json.dumps(vars(task))), "train_seconds": train_seconds,
                "analysis_seconds": time.perf_counter() - start, "records": records}
    atomic_write_json(out / "analysis.json", analysis)
    shown = rows[~rows["metric"].str.startswith("maj@") | rows["metric"].isin(["maj@1", f"maj@{plan.eval_samples}"])]
    print(shown.pivot(index="metric", columns="checkpoint", values="value")[["before", "after", "after_minus_before"]]
          .to_string(float_format="%.3f", na_rep=""))
    print(f"analysis {analysis['analysis_seconds']:.0f} s; wrote {out / 'analysis.json'}")
    if args.report:
        report = Path(args.report)
        rows.insert(0, "command", command)
        atomic_write_text(report.with_suffix(".csv"), rows.to_csv(index=False))
        atomic_write_json(report.with_suffix(".json"), analysis)
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        metrics_copy = atomic_write_jsonl(report.parent / f"{report.name}_metrics.jsonl", metrics)
        plot_rl(metrics, rows, report.with_suffix(".png"), f"CISPO on {config.task} ({config.preset}) from {checkpoint}")
        print(f"wrote {report.with_suffix('.csv')}, .json, .png and {metrics_copy}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Task accuracy of a checkpoint under memento and restart decoding, with 95% intervals."""
    from leakage.evaluate import evaluate_checkpoint
    from leakage.io import atomic_write_json

    model, tokenizer = _load_checkpoint(args.checkpoint)
    results = {"checkpoint": str(args.checkpoint),
               **evaluate_checkpoint(model, tokenizer, from_flags(TaskConfig, args), args.n, args.seed,
                                     from_flags(EvictionConfig, args))}
    _print_accuracies(results)
    if args.out:
        atomic_write_json(args.out, results)
        print(f"wrote {args.out}")
    return 0


def _consistency(args: argparse.Namespace) -> int:
    """Logit and KV differences between the two eviction timings, and decoder vs masked forward."""
    from leakage.consistency import consistency_report
    from leakage.io import atomic_write_json
    from leakage.tasks import make_example

    model, tokenizer = _load_checkpoint(args.checkpoint)
    task = from_flags(TaskConfig, args)
    examples = [make_example(task, tokenizer, args.seed, i, "val") for i in range(args.n)]
    report = consistency_report(model, tokenizer, [e.ids for e in examples], [e.positions for e in examples],
                                from_flags(EvictionConfig, args, summary_end_sees_block=False))
    report = {"checkpoint": str(args.checkpoint), "task": vars(task), "seed": args.seed,
              "command": "leakage consistency " + " ".join(args.argv), **report}
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
    if args.out:
        atomic_write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    """The passcode probe on a checkpoint's retained keys/values: every condition and control, the keep
    sweep and (for a `leakage train` run) the checkpoint sweep; CSV and figures."""
    import time
    from dataclasses import asdict, replace
    from pathlib import Path

    import pandas as pd

    from leakage.io import atomic_write_json, atomic_write_text
    from leakage.plotting import plot_probe_conditions, plot_probe_layers, plot_probe_sweeps
    from leakage.probe import ProbeConfig
    from leakage.probe_data import injected_traces, synthetic_traces
    from leakage.probing import is_training_run_final, probe_experiment
    from leakage.tasks import make_example
    from leakage.trace import read_openmementos

    start = time.perf_counter()
    model, tokenizer = _load_checkpoint(args.checkpoint)
    experiment = from_flags(ProbeExperiment, args)
    examples = None
    if args.traces:
        traces = injected_traces(read_openmementos(args.traces), tokenizer, args.n, experiment.passcode_block,
                                 seed=args.trace_seed, max_blocks=experiment.n_blocks)
        blocks = min(len(t.positions.blocks) for t in traces)
        experiment = replace(experiment, n_blocks=blocks)
    else:
        task = TaskConfig(task=args.task, n_blocks=experiment.n_blocks, passcode_block=experiment.passcode_block)
        traces = synthetic_traces(task, tokenizer, args.n, seed=args.trace_seed)
        if experiment.checkpoints and not is_training_run_final(args.checkpoint):
            print(f"{args.checkpoint} is not the final/ model of a `leakage train` run: checkpoint sweep skipped")
        examples = [make_example(task, tokenizer, 1, i, "val") for i in range(args.n_eval)]
    phases = []

    def log(message: str) -> None:
        phases.append({"seconds": round(time.perf_counter() - start, 1), "phase": message})
        print(f"[{phases[-1]['seconds']:6.0f} s] {message}")

    log(f"{len(traces)} traces ready")
    rows = probe_experiment(model, tokenizer, traces, experiment, from_flags(EvictionConfig, args),
                            checkpoint=args.checkpoint, examples=examples, task=args.task, log=log)
    command = "leakage probe " + " ".join(args.argv)
    table = pd.DataFrame(rows).assign(command=command, n_traces=len(traces))
    probed = str(args.checkpoint)  # the sweep's rows name their own checkpoint
    table["checkpoint"] = table["checkpoint"].fillna(probed) if "checkpoint" in table else probed
    shown = table[["condition", "distance", "site", "layer", "accuracy", "ci95_low", "ci95_high", "paper_toy"]]
    with pd.option_context("display.width", 200, "display.max_rows", 300, "display.precision", 3):
        print(shown.to_string(index=False))
    print(f"{len(traces)} traces, {len(rows)} probes in {time.perf_counter() - start:.0f} s")
    if args.out:
        out = Path(args.out)
        atomic_write_text(out, table.drop(columns=["per_digit"]).to_csv(index=False))
        atomic_write_json(out.with_suffix(".json"), {
            "command": command, "checkpoint": str(args.checkpoint), "n_traces": len(traces),
            "experiment": asdict(experiment), "eviction": asdict(from_flags(EvictionConfig, args)),
            "probe": asdict(ProbeConfig(kind=experiment.kind)), "wall_seconds": time.perf_counter() - start,
            "phases": phases})
        title = f"passcode probe ({experiment.kind}), {args.checkpoint}, {len(traces):,} traces"
        figures = [plot_probe_conditions(rows, out.with_name(out.stem + "_conditions.png"), title=title),
                   plot_probe_layers(rows, out.with_name(out.stem + "_layers.png"), title=title),
                   plot_probe_sweeps(rows, out.with_name(out.stem + "_sweeps.png"), title=title)]
        print(f"wrote {out}, " + ", ".join(str(f) for f in figures))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    """The main job: train or reuse the toy model, measure the leak, write REPORT.md (leakage.reproduce)."""
    import time

    from tqdm import tqdm

    from leakage.reproduce import ReproduceConfig, reproduce

    config = from_flags(ReproduceConfig, args)
    start = time.perf_counter()
    records = reproduce(config, progress=lambda items, desc: tqdm(items, desc=desc), log=print)
    failed = [name for name, record in records.items() if "error" in record]
    print(f"\n{len(records) - len(failed)} of {len(records)} stages ok in {time.perf_counter() - start:.0f} s"
          + (f"; failed: {', '.join(failed)} (see {config.out}/stages/)" if failed else ""))
    print(f"wrote {config.out}/REPORT.md")
    return 1 if failed else 0


def _restart(args: argparse.Namespace) -> int:
    """The restart ablation with the memento text held identical: paired accuracies and McNemar's test."""
    from pathlib import Path

    import pandas as pd

    from leakage.io import atomic_write_json, atomic_write_text
    from leakage.restart import restart_ablation
    from leakage.tasks import make_example

    model, tokenizer = _load_checkpoint(args.checkpoint)
    task = from_flags(TaskConfig, args)
    examples = [make_example(task, tokenizer, args.seed, i, "val") for i in range(args.n)]
    result = restart_ablation(model, tokenizer, examples, task.task, from_flags(EvictionConfig, args))
    report = {"command": "leakage restart " + " ".join(args.argv), "checkpoint": str(args.checkpoint),
              "seed": args.seed, **result.as_dict()}
    unit = "block" if task.task == "digits" else "answer digit"
    for name in ("memento", "restart"):
        r = report[name]
        print(f"{name:8s} {r['accuracy']:.3f} [{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]  ({r['total']} {unit}s)")
    low, high = report["drop_ci95"]
    print(f"drop     {report['drop']:+.3f} [{low:+.3f}, {high:+.3f}] (bootstrap over examples); paired "
          f"{report['paired']}; McNemar exact p "
          + (f"= {report['mcnemar_p']:.2g}" if report["mcnemar_p"] > 0 else "< 1e-300 (below float range)"))
    if args.out:
        out = Path(args.out)
        atomic_write_json(out, report)
        units = pd.DataFrame({"example": result.example, "memento_correct": result.normal_correct,
                              "restart_correct": result.restart_correct})
        atomic_write_text(out.with_suffix(".csv"), units.to_csv(index_label="unit"))
        print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 0


def _causal(args: argparse.Namespace) -> int:
    """KV patching maps (`patch`), the ablation sweep (`ablate`) or the erasure curve (`erase`) of a
    passcode checkpoint (leakage.causal); CSV, the run's config as JSON and a figure beside --out."""
    import time
    from dataclasses import asdict
    from pathlib import Path

    from tqdm import tqdm

    from leakage import causal, plotting
    from leakage.io import atomic_write_json, atomic_write_text

    model, tokenizer = _load_checkpoint(args.checkpoint)
    task, config = from_flags(TaskConfig, args), from_flags(EvictionConfig, args)
    experiment = from_flags(CausalExperiment, args)
    start = time.perf_counter()
    if args.command == "erase":
        frame = causal.erasure_curve(model, tokenizer, task, config, experiment, log=print)
        plot = plotting.plot_erasure
        print(frame[["method", "strength", "probe_accuracy", "answer_accuracy", "answer_low", "answer_high"]]
              .to_string(index=False, float_format="%.3f"))
    else:
        examples, twins, digits = causal.passcode_pairs(task, tokenizer, experiment.n, experiment.seed)
        run = causal.passcode_run(model, tokenizer, examples, twins, digits, config)
        if args.command == "patch":
            frame = causal.patching_maps(model, run, experiment.bootstrap, experiment.seed, progress=tqdm)
            plot = plotting.plot_patching
            reference = frame[frame.experiment == "reference"]
            print(reference[["source", "measure", "answer_digit", "metric", "metric_low", "metric_high"]]
                  .to_string(index=False, float_format="%.3f"))
            shown = frame[frame.experiment == "patch_layer_head"]
            columns = ["which", "layer", "kv_head", "effect", "effect_low", "effect_high"]
        else:
            frame = causal.ablation_sweep(model, tokenizer, examples, run, config, experiment.bootstrap,
                                          experiment.seed, progress=tqdm)
            plot = plotting.plot_ablation
            shown = frame[frame.experiment == "ablate_layer"]
            columns = ["source", "layer", "metric", "metric_low", "metric_high", "restart_share"]
        print(shown[columns].to_string(index=False, float_format="%.3f"))
    command = f"leakage {args.command} " + " ".join(args.argv)
    frame.insert(0, "command", command)
    seconds = time.perf_counter() - start
    print(f"{args.command}: {seconds:.0f} s")
    if args.out:
        out = Path(args.out)
        atomic_write_text(out, frame.to_csv(index=False))
        atomic_write_json(out.with_suffix(".json"), {
            "checkpoint": str(args.checkpoint), "command": command, "task": asdict(task),
            "eviction": asdict(config), "experiment": asdict(experiment), "seconds": seconds})
        plot(frame, out.with_suffix(".png"), f"{Path(str(args.checkpoint)).parent.name or args.checkpoint}: "
                                             f"{args.command}")
        print(f"wrote {out}, {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def _evaluation_flags(parser: argparse.ArgumentParser, n: int, n_help: str, out_help: str,
                      eviction_skip: tuple[str, ...]) -> None:
    """Flags of the commands that evaluate a checkpoint on a task's validation examples: --n, --seed, the
    TaskConfig flags (the paper's fixed blocks: no training curriculum), the EvictionConfig flags
    (less `eviction_skip`) and --out."""
    parser.add_argument("--n", type=int, default=n, help=n_help)
    parser.add_argument("--seed", type=int, default=1)
    add_flags(parser, TaskConfig, rename={"n_blocks": "blocks"}, skip=("short_block_rate",))
    add_flags(parser, EvictionConfig, skip=eviction_skip)
    parser.add_argument("--out", help=out_help)


def build_parser() -> argparse.ArgumentParser:
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
    train.add_argument("--preset", default="fast", help="smoke, fast or paper")
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
    add_flags(rl, RLConfig)
    rl.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    rl.add_argument("--overwrite", action="store_true", help="replace the RL run in --out (its run files only)")
    rl.add_argument("--analysis", action=argparse.BooleanOptionalAction, default=True,
                    help="measure before/after RL (accuracy, maj@k, KV, probe, restart drop) into --out/analysis.json")
    rl.add_argument("--report", help="also write the analysis as CSV/JSON/PNG (and the metrics JSONL) at this "
                                     "path stem, e.g. figures/rl_digits_fast")
    rl.set_defaults(func=_rl)

    evaluate = sub.add_parser("eval", help="task accuracy under memento / restart / full-attention decoding")
    evaluate.add_argument("--checkpoint", required=True)
    _evaluation_flags(evaluate, 256, "validation examples", "write the results as JSON here",
                      ("restart", "max_block_tokens"))
    evaluate.set_defaults(func=_eval)

    consistency = sub.add_parser("consistency", help="logit/KV differences between eviction timings, and "
                                                     "eviction decoding vs the masked forward, for a checkpoint")
    consistency.add_argument("checkpoint", help="local HF checkpoint directory")
    _evaluation_flags(consistency, 32, "validation traces of the task", "write the report as JSON here",
                      ("summary_end_sees_block", "max_block_tokens"))
    consistency.set_defaults(func=_consistency)

    restart = sub.add_parser("restart", help="restart ablation with the memento text held identical (paired, McNemar)")
    restart.add_argument("checkpoint", help="local HF checkpoint directory")
    _evaluation_flags(restart, 256, "validation examples",
                      "write the report as JSON here (and the paired units as CSV beside it)",
                      ("restart", "max_block_tokens"))
    restart.set_defaults(func=_restart)

    for name, text in (("patch", "activation patching of the retained KV: layer x head / position kind maps"),
                       ("ablate", "KV ablation sweep of retained positions: resample, mean, restart, zero"),
                       ("erase", "LEACE erasure of the passcode from the retained KV vs a random subspace")):
        causal = sub.add_parser(name, help=text)
        causal.add_argument("checkpoint", help="local HF checkpoint of a passcode model")
        add_flags(causal, CausalExperiment)
        add_flags(causal, TaskConfig, rename={"n_blocks": "blocks"}, skip=("short_block_rate", "passcode_blocks"),
                  defaults={"task": "passcode"})
        add_flags(causal, EvictionConfig, skip=("restart", "max_block_tokens"))
        causal.add_argument("--out", help="write the results as CSV here (config JSON and figure beside it)")
        causal.set_defaults(func=_causal)

    probe = sub.add_parser("probe", help="passcode probe on retained keys/values: conditions, controls, layers")
    probe.add_argument("checkpoint", help="local HF checkpoint directory (its tokenizer has the Memento tokens)")
    probe.add_argument("--task", choices=TASKS, default="digits", help="synthetic traces of this task")
    probe.add_argument("--traces", help="OpenMementos JSON/JSONL: real traces with an injected passcode instead")
    probe.add_argument("--n", type=int, default=22_000, help="traces (the paper: 50K; 20K at least)")
    probe.add_argument("--trace-seed", type=int, default=0)
    probe.add_argument("--n-eval", type=int, default=256,
                       help="validation examples for each checkpoint's task accuracy (checkpoint sweep)")
    add_flags(probe, ProbeExperiment, rename={"n_blocks": "blocks"})
    add_flags(probe, EvictionConfig, skip=("restart", "max_block_tokens", "summary_end_sees_block"))
    probe.add_argument("--out", help="write every probe's row as CSV here, and its figures beside it")
    probe.set_defaults(func=_probe)

    repro = sub.add_parser("reproduce", help="the main job: train the toy model, measure the leak, write REPORT.md")
    add_flags(repro, ReproduceConfig)
    repro.set_defaults(func=_reproduce)

    add_data_commands(sub)
    return parser


def _user_error(err: BaseException) -> bool:
    """Errors the user can fix (bad input, refused requests, failed services), printed as one line."""
    from leakage.errors import UserError

    return isinstance(err, (UserError, ValueError, KeyError, OSError))


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors the user can fix print one line naming what and where, exit code 2;
    `--debug` shows their traceback. Anything else is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = [a for a in argv if a != "--debug"][1:]  # the subcommand's arguments, for the command in results
    try:
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
