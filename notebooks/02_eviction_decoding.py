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
# # 02 · Eviction decoding with a trained model
#
# The decoder keeps a real batched KV cache and *physically removes* evicted blocks from it, as the
# official engine does; every token keeps its original (logical) RoPE position. Here a trained `digits`
# model writes a whole trace itself; we watch its cache, decode again in restart mode, and check that one
# dense forward under the memento mask computes exactly what the decoder computed.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("LEAKAGE_PRESET", "fast")  # smoke: seconds (the test suite); fast: the README's models
CHECKPOINT = f"runs/digits-{PRESET}/final"  # any `leakage train` digits model; trained here if missing
EXAMPLE = 0  # which validation example to decode

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from leakage import EvictionConfig, additive_mask, generate, load_model, memento_mask, teacher_force
from leakage.training.train import ensure_trained
from leakage.training.tasks import TaskConfig, make_example

if not Path(CHECKPOINT).exists():
    CHECKPOINT = ensure_trained(TaskConfig(task="digits"), PRESET)
model, tokenizer = load_model(CHECKPOINT)
task = TaskConfig(task="digits")
example = make_example(task, tokenizer, seed=1, index=EXAMPLE, split="val")
prompt = example.ids[:example.prompt_len + 1]  # the question and <think>: the model writes the rest
print(tokenizer.decode(prompt))

# %% [markdown]
# ## Generate with block eviction

# %%
memento = generate(model, tokenizer, prompt, EvictionConfig(), max_new_tokens=len(example.ids) + 20).sequences[0]
print(tokenizer.decode(memento.response))
print("true running sums:", example.running_sums)
print("evictions:", [(e.block, e.start, e.end) for e in memento.evictions])

# %% [markdown]
# ## The KV sawtooth: what the cache held at every step

# %%
vanilla = generate(model, tokenizer, prompt, EvictionConfig(keep_last_n_blocks=-1),
                   max_new_tokens=len(example.ids) + 20).sequences[0]
plt.figure(figsize=(7, 3))
plt.plot(vanilla.kv.cached_tokens, label=f"vanilla (peak {vanilla.kv.peak})")
plt.plot(memento.kv.cached_tokens, label=f"memento (peak {memento.kv.peak})")
plt.xlabel("position")
plt.ylabel("KV cache (tokens)")
plt.legend()
plt.show()

# %% [markdown]
# ## Restart mode
# Each memento's keys and values are recomputed without its block: the memento *text* survives, but the
# implicit channel through its KV is gone. The model was trained with the channel, so it is out of
# distribution here (notebook 04 and `docs/results.md` separate the two effects).

# %%
restart = generate(model, tokenizer, prompt, EvictionConfig(restart=True), max_new_tokens=len(example.ids) + 20)
print(tokenizer.decode(restart.sequences[0].response))

# %% [markdown]
# ## Decoder == one masked forward
# Feeding the decoded sequence token by token through the evicting decoder gives the same logits as one
# dense forward with the memento mask (to float precision): the mask is how training and analysis see
# exactly what inference computes.

# %%
ids = memento.ids
decoded = teacher_force(model, tokenizer, ids, EvictionConfig(), prompt_len=memento.prompt_len).logits[0]
mask = memento_mask(ids, tokenizer, prompt_len=memento.prompt_len, plain_prompt=False, strict=False)
with torch.no_grad():
    dense = model(torch.tensor([ids]), attention_mask=additive_mask(mask)).logits[0]
print("max |logit difference|:", float((decoded[:len(ids)] - dense).abs().max()))
