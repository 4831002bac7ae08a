#!/usr/bin/env bash
# Data-pipeline results in figures/ (see docs/results.md, "Data pipeline"): boundary reduction, the offline
# end-to-end run on the OpenThoughts fixture, its statistics, and KV simulation of real traces.
# Reads ../shared/fixtures (never copied into the repo); intermediate traces go to runs/ (git-ignored).
# Tokens are those of a stand-in byte-level BPE (vocab 2048) trained at run time on the four fixture files.
set -euo pipefail
cd "$(dirname "$0")/.."
F=../shared/fixtures
CORPUS=("$F/openthoughts_example_trace.jsonl" "$F/memento_example_code.json" "$F/memento_example_response.json"
        "$F/memento_example_science.json")
TOK=(--tokenizer stand-in --stand-in-corpus "${CORPUS[@]}")
MEMENTO=("$F/memento_example_response.json" "$F/memento_example_code.json" "$F/memento_example_science.json")

leakage data split "$F/openthoughts_example_trace.jsonl" "${TOK[@]}" --report figures/boundary_reduction.json
leakage data run "$F/openthoughts_example_trace.jsonl" --out runs/pipeline/openthoughts_paper.jsonl "${TOK[@]}"
leakage data run "$F/openthoughts_example_trace.jsonl" --out runs/pipeline/openthoughts_reference.jsonl "${TOK[@]}" \
  --score-mean blocks
LABELS=(ours:paper-objective ours:reference-objective memento-model:aime25 memento-model:livecodebench
        memento-model:gpqa)
leakage data stats runs/pipeline/openthoughts_paper.jsonl runs/pipeline/openthoughts_reference.jsonl "${MEMENTO[@]}" \
  --labels "${LABELS[@]}" "${TOK[@]}" --csv figures/pipeline_stats.csv --plot figures/pipeline_stats.png
leakage data kv "${MEMENTO[@]}" runs/pipeline/openthoughts_paper.jsonl runs/pipeline/openthoughts_reference.jsonl \
  --labels "${LABELS[@]:2}" "${LABELS[@]:0:2}" "${TOK[@]}" --csv figures/kv_real_traces.csv --plot figures/kv_real_traces.png
