# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Real traces: the data pipeline and the KV cache they would need
#
# OpenMementos traces (the paper's three examples from its repository, MIT, in `../shared/fixtures/` when
# that folder is there; otherwise this project's own made-up ones in `tests/fixtures/`) and an OpenThoughts
# chain of thought that our pipeline turns into a Memento trace: sentence split, boundary
# scores, the optimal segmentation into blocks, extractive mementos. Then the KV cache each would need,
# vanilla vs memento, replayed through the same eviction schedule the decoder uses.

# %% tags=["parameters"]
import os

# a folder of OpenMementos / OpenThoughts traces: the real ones in ../shared/fixtures when they are there, else
# the project's own made-up examples (tests/fixtures); paths from the repository root
FIXTURES = os.environ.get("LEAKAGE_FIXTURES") or next(
    (p for p in ("../shared/fixtures", "tests/fixtures") if os.path.isdir(p) or os.path.isdir(os.path.join("..", p))))
TRACE = "memento_example_code.json"  # an OpenMementos record to look at

# %%
from pathlib import Path

import matplotlib.pyplot as plt

from leakage import EvictionConfig, read_openmementos, simulate_kv
from leakage.pipeline.compress import ExtractiveCompressor
from leakage.pipeline.run import PipelineConfig, process_trace, read_openthoughts
from leakage.pipeline.scoring import RuleScorer
from leakage.pipeline.tokenizer import ensure_memento_markers, train_stand_in_tokenizer

fixtures = Path(FIXTURES) if Path(FIXTURES).exists() else Path("..") / FIXTURES  # from the repo or notebooks/
records = {name: read_openmementos(fixtures / name)[0] for name in
           ("memento_example_code.json", "memento_example_response.json", "memento_example_science.json")}
texts = [r.to_trace().to_text() for r in records.values()]
tokenizer = train_stand_in_tokenizer(texts)  # a byte-level BPE trained here: nothing is downloaded
ensure_memento_markers(tokenizer)
trace = records[TRACE].to_trace()
print(f"{TRACE}: {len(trace.blocks)} blocks")
print("first memento:", trace.blocks[0][1][:300])

# %% [markdown]
# ## The KV cache the trace needs, vanilla vs memento

# %%
plt.figure(figsize=(8, 3))
for name, record in records.items():
    ids = record.to_trace().to_ids(tokenizer)
    vanilla = simulate_kv(ids, tokenizer, EvictionConfig(keep_last_n_blocks=-1))
    memento = simulate_kv(ids, tokenizer, EvictionConfig())
    print(f"{name}: {len(ids)} tokens, peak {vanilla.peak} -> {memento.peak} ({vanilla.peak / memento.peak:.1f}x), "
          f"AUC {vanilla.auc / memento.auc:.1f}x smaller")
    plt.plot(memento.cached_tokens, label=name.replace("memento_example_", "").replace(".json", ""))
plt.xlabel("position")
plt.ylabel("KV cache under eviction (tokens)")
plt.legend()
plt.show()

# %% [markdown]
# ## Raw chain of thought -> a Memento trace

# %%
raw = next(iter(read_openthoughts(fixtures / "openthoughts_example_trace.jsonl")))
built = process_trace(raw, tokenizer, RuleScorer(), ExtractiveCompressor(), PipelineConfig()).to_trace()
ids = built.to_ids(tokenizer)
print(f"{len(built.blocks)} blocks, {len(ids)} tokens")
block, memento = built.blocks[0]
print("block 0:", block[:400], "...")
print("memento 0:", memento)
vanilla, memento_kv = (simulate_kv(ids, tokenizer, EvictionConfig(keep_last_n_blocks=k)) for k in (-1, 0))
print(f"peak KV {vanilla.peak} -> {memento_kv.peak} tokens")
