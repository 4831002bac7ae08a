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
# # 04 · Patching the implicit channel, ablating it, erasing the passcode
#
# A probe shows the passcode is *present* in the retained KV; interventions show whether the model *uses*
# it. The `passcode` model answers with the passcode written in block 1, nine mementos earlier; its text
# is in no memento. For each example we build a **twin** with another passcode and every other token
# identical, so the two runs differ only in what the evicted block left in the cache. Then we edit the
# cache at the step that evicts block 1, exactly as `Decoder.run(on_step=...)` would.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("LEAKAGE_PRESET", "fast")  # smoke: seconds; fast: the README's models
CHECKPOINT = f"runs/passcode-{PRESET}/final"  # a `leakage train --task passcode` model; trained here if missing
N = 512 if PRESET != "smoke" else 8  # example pairs
LAYER = 1  # the layer whose heads and positions we look at in detail

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from leakage import EvictionConfig, load_model
from leakage.analysis import ablation
from leakage.analysis.patch_maps import reference_rows
from leakage.analysis.twins import CausalExperiment, CausalSpec, passcode_pairs, passcode_run
from leakage.analysis.patching import clean_and_corrupted, kv_patch_layer_head, kv_patch_layer_kind
from leakage.training.train import ensure_trained
from leakage.training.tasks import TaskConfig

task = TaskConfig(task="passcode")
if not Path(CHECKPOINT).exists():
    CHECKPOINT = ensure_trained(task, PRESET)
model, tokenizer = load_model(CHECKPOINT)
examples, twins, twin_digits = passcode_pairs(task, tokenizer, N, seed=0)
run = passcode_run(model, tokenizer, examples, twins, twin_digits, EvictionConfig())
print(f"cache patched before query {run.at}; it holds positions {run.held[0].nonzero().flatten().tolist()}")
reference_rows(model, run, bootstrap=200)[["source", "measure", "answer_digit", "metric", "metric_low", "metric_high"]]

# %% [markdown]
# ## Layer x KV head: which retained values carry the passcode?
# Effect 0 = the clean run, 1 = the run whose whole cache came from the twin.

# %%
clean, corrupted = clean_and_corrupted(model, run)
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
for ax, which in zip(axes, ("keys", "values", "both")):
    frame = kv_patch_layer_head(model, run, which=which).frame(clean, corrupted, n_resamples=200)
    sns.heatmap(frame.pivot(index="layer", columns="kv_head", values="effect"), ax=ax, annot=True, fmt=".2f",
                cmap="RdBu_r", center=0, vmin=-1, vmax=1)
    ax.set_title(which)
plt.show()

# %% [markdown]
# ## Which retained positions of that layer?

# %%
kinds = kv_patch_layer_kind(model, run, which="values").frame(clean, corrupted, n_resamples=200)
kinds[kinds.layer == LAYER][["kind", "effect", "effect_low", "effect_high"]]

# %% [markdown]
# ## Ablation: resample, mean, restart, zero
# Replace a layer's retained KV and score the answer digits. Zeroing is a contrast only: it breaks models
# for reasons unrelated to content.

# %%
spec = CausalSpec(str(CHECKPOINT), task, experiment=CausalExperiment(n=N, bootstrap=200))
sweep = ablation.run(spec).rows  # the runner `leakage ablate` calls: spec in, record out (`out=` writes it)
sweep[sweep.experiment == "ablate_layer"].pivot(index="layer", columns="source", values="metric")

# %% [markdown]
# `leakage patch|ablate|erase CHECKPOINT --out figures/X.csv` run these (and LEACE erasure against a
# random subspace) with bootstrap intervals, the run's config and figures; `docs/results.md` has the
# `fast` results: the whole channel is the values of one KV head in layer 1.
