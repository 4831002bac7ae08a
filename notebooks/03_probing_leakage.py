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
# # 03 · Probing what an erased block leaks
#
# Block 1 of every trace holds a random 5-digit passcode that enters no sum and no memento. Once block 1 is
# evicted, the only way later tokens can know the passcode is through keys and values that were computed
# while it was visible — the mementos'. We capture those keys and values with one masked forward and train
# the paper's probe on them: **direct** (block 1's own memento, which saw the passcode), **masked d**
# (the memento of block 1 + d, written after block 1 left the cache), and the controls a sceptic asks for.

# %% tags=["parameters"]
import os

PRESET = os.environ.get("LEAKAGE_PRESET", "fast")  # smoke: seconds; fast: the README's models
CHECKPOINT = f"runs/digits-{PRESET}/final"  # any `leakage train` model; trained here if missing
N_TRACES = 22_000 if PRESET != "smoke" else 200  # the paper: 50K; 20K at least for the full probe
PROBE = "mlp" if PRESET != "smoke" else "linear"  # the paper's MLP, or a linear probe
LAYERS = None  # None: every layer concatenated; or e.g. [3]

# %%
from pathlib import Path

import matplotlib.pyplot as plt

from leakage import EvictionConfig, load_model
from leakage.analysis.probe import ProbeConfig, control_labels, fit_probe, shuffled_labels
from leakage.analysis.probe_data import capture_dataset, site_name, synthetic_traces
from leakage.training.train import ensure_trained
from leakage.training.tasks import TaskConfig

if not Path(CHECKPOINT).exists():
    CHECKPOINT = ensure_trained(TaskConfig(task="digits"), PRESET)
model, tokenizer = load_model(CHECKPOINT)
traces = synthetic_traces(TaskConfig(passcode_block=1), tokenizer, N_TRACES)
sites = [("memento", -1), ("memento", 0), ("memento", 1), ("memento", 2)]
data = capture_dataset(model, tokenizer, traces, EvictionConfig(), sites)
print({name: tuple(kv.shape) for name, kv in data.kv.items()})

# %% [markdown]
# ## Direct, masked and the causal control
# `memento-1` is block 0's memento, computed before the passcode existed: it must be at chance (10%).

# %%
config = ProbeConfig(kind=PROBE, max_epochs=200 if PRESET != "smoke" else 5)
results = {}
for part, offset in sites:
    name = site_name(part, offset)
    results[name] = fit_probe(data.features(name, LAYERS), data.labels, data.groups, config)
    r = results[name]
    print(f"{name:>10}: {r.accuracy:.3f} [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]  (chance {r.chance:.2f})")

# %% [markdown]
# ## Controls at the first masked memento
# Shuffled labels and Hewitt & Liang's control task (random digits per passcode, which only memorisation
# could learn) must stay at chance; the gap to the real task is the probe's selectivity.

# %%
masked = site_name("memento", 1)
features = data.features(masked, LAYERS)
shuffled = fit_probe(features, shuffled_labels(data.labels, data.groups), data.groups, config)
control = fit_probe(features, control_labels(data.groups, data.labels.shape[1]), data.groups, config)
print(f"shuffled labels {shuffled.accuracy:.3f}, control task {control.accuracy:.3f}, "
      f"selectivity {results[masked].accuracy - control.accuracy:+.3f}")

# %%
names = list(results)
plt.figure(figsize=(6, 3))
plt.bar(names, [results[n].accuracy for n in names],
        yerr=[[results[n].accuracy - results[n].ci95[0] for n in names],
              [results[n].ci95[1] - results[n].accuracy for n in names]], capsize=3)
plt.axhline(0.1, color="grey", ls="--", label="chance")
plt.ylabel("passcode digit accuracy")
plt.legend()
plt.show()

# %% [markdown]
# ## Every condition at once: the runner
# `leakage probe CHECKPOINT --out figures/probe.csv` runs the whole experiment: every condition and control
# above plus per layer, distance, retained position kind, keep_last_n_blocks, checkpoints, bf16 and the leak
# spectrum. It is one call of `leakage.analysis.probing.run`, here with the sweeps left out; `out=` would
# write its CSV, JSON and figures. `docs/results.md` has the `fast` results.

# %%
from leakage.analysis import probing

experiment = probing.ProbeExperiment(per_layer=False, mdl=False, precision=False, max_keep=0, checkpoints=0)
record = probing.run(probing.ProbeSpec(str(CHECKPOINT), n=N_TRACES, experiment=experiment, probe=config))
record.rows[["condition", "distance", "site", "accuracy", "ci95_low", "ci95_high", "paper_toy"]]
