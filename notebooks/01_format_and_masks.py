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
# # 01 · The Memento format, its masks, and the engine's timing
#
# A Memento trace interleaves reasoning **blocks** with short summaries, **mementos**:
#
# `prompt <think> <|block_start|> reasoning <|block_end|> <|summary_start|> memento <|summary_end|> ... </think> answer`
#
# Once a memento is closed, its block is **evicted** from the KV cache: later tokens see the prompt, the
# mementos and (by default) the block delimiters, never the erased reasoning. This notebook renders a trace,
# draws the attention mask that computes exactly what eviction decoding computes, steps through the
# eviction schedule (the official engine's timing), and counts the KV cache as the trace is decoded.

# %% tags=["parameters"]
N_BLOCKS = 3  # blocks in the example trace
KEEP_LAST_N_BLOCKS = 0  # 0: evict every completed block (the paper's default); -1: no eviction

# %%
import matplotlib.pyplot as plt
import seaborn as sns

from leakage import EvictionConfig, MementoTrace, build_model, eviction_schedule, memento_mask, parse_spans, simulate_kv

_, tokenizer = build_model("tiny")  # the synthetic vocabulary with the four Memento tokens
blocks = [(" ".join(str((i + j) % 10) for j in range(3)) + f" = {(3 * i + 3) % 10}", f"{(3 * i + 3) % 10}")
          for i in range(N_BLOCKS)]
trace = MementoTrace("sum ?", blocks, "3")
ids = trace.to_ids(tokenizer)
print(trace.to_text())
print(len(ids), "tokens")

# %% [markdown]
# ## Spans: where every block, memento and delimiter sits

# %%
spans = parse_spans(ids, tokenizer)
for block in spans.blocks:
    print(f"block {block.index}: <|block_start|> {block.block_start}, <|block_end|> {block.block_end}, "
          f"memento {block.summary_start}..{block.summary_end}")

# %% [markdown]
# ## The memento mask
# Row = query position, column = key position; dark = may attend. The triangle is causal; the holes are
# the evicted blocks. Note the `<|summary_end|>` row: under the engine's timing the block it closes is
# evicted *before* that token is fed, so its own row no longer sees the block.

# %%
config = EvictionConfig(keep_last_n_blocks=KEEP_LAST_N_BLOCKS)
labels = [tokenizer.convert_ids_to_tokens(i).replace("<|", "").replace("|>", "") for i in ids]


def show(mask, title):
    fig, ax = plt.subplots(figsize=(9, 8))
    sns.heatmap(mask.int(), ax=ax, cbar=False, cmap="Greys", xticklabels=labels, yticklabels=labels, square=True)
    ax.set_title(title)
    ax.tick_params(labelsize=6)
    plt.show()


show(memento_mask(ids, tokenizer, eviction=config), f"memento mask, {config}")

# %% [markdown]
# The two variants beside it: `summary_end_sees_block=True` (this package's earlier timing, not the engine's)
# and the restart ablation's mask (every memento recomputed without its block).

# %%
late = EvictionConfig(keep_last_n_blocks=KEEP_LAST_N_BLOCKS, summary_end_sees_block=True)
restart = EvictionConfig(keep_last_n_blocks=max(KEEP_LAST_N_BLOCKS, 0), restart=True)
print("positions where the earlier timing differs:", (memento_mask(ids, tokenizer, eviction=late) ^
                                                      memento_mask(ids, tokenizer, eviction=config)).nonzero().tolist())
show(memento_mask(ids, tokenizer, eviction=restart), "restart mask (final rows)")

# %% [markdown]
# ## The eviction schedule, step by step
# Every event the decoder applies, in order: which positions leave the cache and before which query.

# %%
schedule = eviction_schedule(spans, config)
for eviction in schedule.evictions:
    print(f"block {eviction.block}: positions {eviction.start}..{eviction.end - 1} evicted when "
          f"{labels[eviction.trigger]} at {eviction.trigger} is sampled, before query {eviction.before}")
for recompute in eviction_schedule(spans, restart).recomputes:
    print(f"restart: positions {recompute.start}..{recompute.at} recomputed in the step that feeds {recompute.at}")

# %% [markdown]
# ## The KV cache while decoding: the sawtooth

# %%
vanilla = simulate_kv(ids, tokenizer, EvictionConfig(keep_last_n_blocks=-1))
memento = simulate_kv(ids, tokenizer, config)
plt.figure(figsize=(7, 3))
plt.plot(vanilla.cached_tokens, label=f"vanilla (peak {vanilla.peak})")
plt.plot(memento.cached_tokens, label=f"memento (peak {memento.peak})")
plt.xlabel("position")
plt.ylabel("KV cache (tokens)")
plt.legend()
plt.show()
