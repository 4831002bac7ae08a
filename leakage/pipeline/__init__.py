"""Data pipeline: raw chain-of-thought -> Memento traces (OpenMementos-style records).

One module per stage, each with a pure core function:

    sentences  structure-aware sentence splitter (+ the naive splitter it is measured against)
    scoring    boundary scores 0-3: rule-based (offline default) or an LLM judge
    segment    exact segmentation: max mean(chosen scores) - lambda * CV(block token sizes)
    compress   mementos: extractive (offline) or an LLM compressor with a judge loop
    llm        a small OpenAI-compatible chat-completions client (stdlib only)
    run        trace-level orchestration, resumable multi-trace runs
    stats      per-trace statistics, distribution plots, KV simulation of real traces
    tokenizer  loading a local HF tokenizer, or training the deterministic stand-in BPE
    cli        `leakage data ...`
"""
