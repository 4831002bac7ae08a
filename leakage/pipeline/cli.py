"""`leakage data split|run|stats|kv`: the data pipeline's command line (registered by leakage.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path

from leakage.io import atomic_write_json, atomic_write_text


def _add_tokenizer_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--tokenizer", required=required,
                        help="a local HF tokenizer directory, or 'stand-in' for a byte-level BPE trained at run time")
    parser.add_argument("--stand-in-corpus", nargs="+", default=None, metavar="FILE",
                        help="JSON/JSONL files whose strings train the stand-in (default: this command's inputs)")
    parser.add_argument("--stand-in-vocab", type=int, default=None, help="stand-in vocabulary size (default 2048)")


def _tokenizer(args, inputs):
    from leakage.pipeline.tokenizer import STAND_IN_VOCAB_SIZE, corpus_texts, load_tokenizer, train_stand_in_tokenizer

    if args.tokenizer is None:
        return None
    if args.tokenizer == "stand-in":
        corpus = args.stand_in_corpus or inputs
        return train_stand_in_tokenizer(corpus_texts(corpus), args.stand_in_vocab or STAND_IN_VOCAB_SIZE)
    return load_tokenizer(args.tokenizer)


def _split(args) -> int:
    from leakage.pipeline.run import read_openthoughts
    from leakage.pipeline.sentences import boundary_reduction
    from leakage.pipeline.tokenizer import token_counter, tokenizer_label

    tokenizer = _tokenizer(args, [args.input])
    count = token_counter(tokenizer) if tokenizer is not None else None
    traces, naive, structured = [], 0, 0
    for raw in read_openthoughts(args.input):
        report = boundary_reduction(raw.thinking, count_tokens=count)
        traces.append({"trace_id": raw.trace_id, "chars": len(raw.thinking), **report.to_dict()})
        naive += report.naive_boundaries
        structured += report.structured_boundaries
        ratio = report.reduction_ratio
        print(f"{raw.trace_id}: {len(raw.thinking):,} chars, naive {report.naive_boundaries} boundaries, "
              f"structure-aware {report.structured_boundaries} ({ratio:.2f}x fewer)" if ratio else
              f"{raw.trace_id}: no boundary left")
        print("  removed: " + ", ".join(f"{k} {v}" for k, v in report.removed.items()))
    total = {"naive_boundaries": naive, "structured_boundaries": structured,
             "reduction_ratio": naive / structured if structured else None}
    print(f"total: naive {naive}, structure-aware {structured}"
          + (f", {total['reduction_ratio']:.2f}x fewer" if structured else ""))
    if args.report:
        atomic_write_json(args.report, {
            "input": str(args.input), "fragment_token_counter": tokenizer_label(tokenizer) if tokenizer is not None
            else "words and punctuation", "total": total, "traces": traces})
        print(f"wrote {args.report}")
    return 0


def _run(args) -> int:
    from tqdm import tqdm

    from leakage.pipeline.compress import ExtractiveCompressor, JudgeLoopConfig, LLMCompressor
    from leakage.pipeline.llm import ChatClient, LLMConfig
    from leakage.pipeline.run import PipelineConfig, run_pipeline
    from leakage.pipeline.scoring import LLMScorer, RuleScorer
    from leakage.pipeline.segment import SegmentConfig
    from leakage.pipeline.tokenizer import token_counter, tokenizer_label

    tokenizer = _tokenizer(args, [args.input])
    client = None
    if "llm" in (args.scorer, args.compressor):
        if not (args.llm_base_url and args.llm_model):
            raise ValueError("--scorer llm / --compressor llm need --llm-base-url and --llm-model")
        client = ChatClient(LLMConfig(base_url=args.llm_base_url, model=args.llm_model, timeout_s=args.llm_timeout))
    scorer = LLMScorer(client) if args.scorer == "llm" else RuleScorer()
    if args.compressor == "llm":
        judge = ChatClient(LLMConfig(base_url=args.llm_base_url, model=args.judge_model,
                                     timeout_s=args.llm_timeout)) if args.judge_model else None
        compressor = LLMCompressor(client, judge, JudgeLoopConfig())
    else:
        compressor = ExtractiveCompressor(token_counter(tokenizer))
    config = PipelineConfig(segment=SegmentConfig(lambda_=args.lambda_, min_block_tokens=args.min_block_tokens,
                                                  min_blocks=args.min_blocks, max_blocks=args.max_blocks,
                                                  score_mean=args.score_mean))
    print(f"tokenizer: {tokenizer_label(tokenizer)}; scorer: {args.scorer}; compressor: {args.compressor}")
    with tqdm(desc="traces", unit="trace") as bar:
        summary = run_pipeline(args.input, args.out, tokenizer=tokenizer, scorer=scorer, compressor=compressor,
                               config=config, checkpoint_dir=args.checkpoint, keep_checkpoint=args.keep_checkpoint,
                               max_new_traces=args.max_new_traces, on_trace_done=lambda *_: bar.update())
    print(f"{summary.n_traces} traces: {summary.n_processed} processed, {summary.n_reused} from the checkpoint")
    print(f"wrote {summary.output}" if summary.complete else "stopped early (--max-new-traces); rerun to resume")
    return 0


def _labels(args) -> list[str] | None:
    if args.labels and len(args.labels) != len(args.inputs):
        raise ValueError(f"--labels needs one label per input ({len(args.inputs)}), got {len(args.labels)}")
    return args.labels


def _stats(args) -> int:
    import pandas as pd

    from leakage.pipeline.stats import block_frame, plot_pipeline_stats, stats_of_files
    from leakage.pipeline.tokenizer import tokenizer_label

    tokenizer = _tokenizer(args, args.inputs)
    stats = stats_of_files(args.inputs, tokenizer, _labels(args))
    summary = pd.DataFrame([s.summary() for s in stats])
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(summary.to_string(index=False))
    name = tokenizer_label(tokenizer)
    if args.csv:
        atomic_write_text(args.csv, summary.assign(tokenizer=name).to_csv(index=False, float_format="%.4f"))
        blocks_csv = args.csv.with_name(args.csv.stem + "_blocks.csv")
        blocks = block_frame(stats).assign(tokenizer=name)
        atomic_write_text(blocks_csv, blocks.to_csv(index=False, float_format="%.4f"))
        print(f"wrote {args.csv} and {blocks_csv}")
    if args.plot:
        plot_pipeline_stats(stats, args.plot, caption=_caption(args, name))
        print(f"wrote {args.plot}")
    return 0


def _caption(args, tokenizer_name: str) -> str:
    """Figure caption naming the tokenizer whose tokens the figure counts."""
    stand_in = " (a stand-in BPE trained on the fixture texts, not a model's tokenizer)"
    return f"tokens of {tokenizer_name}" + (stand_in if args.tokenizer == "stand-in" else "")


def _kv(args) -> int:
    import pandas as pd

    from leakage.pipeline.stats import kv_of_files, plot_kv
    from leakage.pipeline.tokenizer import tokenizer_label

    tokenizer = _tokenizer(args, args.inputs)
    comparisons = kv_of_files(args.inputs, tokenizer, _labels(args))
    name = tokenizer_label(tokenizer)
    frame = pd.DataFrame([c.row(name) for c in comparisons])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.drop(columns="tokenizer").to_string(index=False))
    print(f"tokenizer: {name}")
    if args.csv:
        atomic_write_text(args.csv, frame.to_csv(index=False))
        print(f"wrote {args.csv}")
    if args.plot:
        plot_kv(comparisons, args.plot, caption=_caption(args, name))
        print(f"wrote {args.plot}")
    return 0


def add_data_commands(subparsers) -> None:
    """Register `leakage data ...` on the top-level parser's subparsers."""
    data = subparsers.add_parser("data", help="data pipeline: raw chain-of-thought -> Memento traces")
    sub = data.add_subparsers(dest="data_command", required=True)

    split = sub.add_parser("split", help="sentence-split OpenThoughts traces; naive vs structure-aware boundaries")
    split.add_argument("input", type=Path, help="OpenThoughts-style JSONL ({'cot': '<think>...</think>', ...})")
    split.add_argument("--report", type=Path, help="write the boundary-reduction report (JSON) here")
    _add_tokenizer_args(split, required=False)
    split.set_defaults(func=_split)

    run = sub.add_parser("run", help="split -> score -> segment -> compress, resumable, to OpenMementos JSONL")
    run.add_argument("input", type=Path)
    run.add_argument("--out", type=Path, required=True)
    _add_tokenizer_args(run)
    run.add_argument("--scorer", choices=("rule", "llm"), default="rule")
    run.add_argument("--compressor", choices=("extractive", "llm"), default="extractive")
    run.add_argument("--llm-base-url", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 "
                                            "(bearer token from $OPENAI_API_KEY if set)")
    run.add_argument("--llm-model")
    run.add_argument("--judge-model", help="model for the judge (default: --llm-model)")
    run.add_argument("--llm-timeout", type=float, default=120.0)
    run.add_argument("--lambda", dest="lambda_", type=float, default=0.5)
    run.add_argument("--min-block-tokens", type=int, default=200)
    run.add_argument("--min-blocks", type=int, default=1)
    run.add_argument("--max-blocks", type=int, default=None)
    run.add_argument("--score-mean", choices=("boundaries", "blocks"), default="boundaries",
                     help="divide the chosen score sum by K - 1 (paper) or K (reference implementation)")
    run.add_argument("--checkpoint", type=Path, help="checkpoint directory (default: OUT.checkpoint)")
    run.add_argument("--keep-checkpoint", action="store_true")
    run.add_argument("--max-new-traces", type=int, default=None, help="stop after this many new traces")
    run.set_defaults(func=_run)

    for name, func, help_ in (("stats", _stats, "per-trace block/memento statistics and distribution plots"),
                              ("kv", _kv, "KV simulation of Memento traces: vanilla vs memento peak and AUC")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("inputs", nargs="+", type=Path, help="OpenMementos JSON/JSONL files")
        p.add_argument("--labels", nargs="+", help="one label per input (default: file stems)")
        _add_tokenizer_args(p)
        p.add_argument("--csv", type=Path)
        p.add_argument("--plot", type=Path)
        p.set_defaults(func=func)
