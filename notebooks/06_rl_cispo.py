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
# # 06 · RL with CISPO on block-masked rollouts, and what it does to the channel
#
# The paper's recipe ends with RL: CISPO on rollouts decoded with block eviction, a training forward under
# the same memento mask, KL against the SFT model. Here we fine-tune the channel-dependent `passcode`
# model (its answer is the passcode of block 1, which no memento holds) on answer reward, and ask: does
# the gain come through the memento text, or through the KV the evicted block left behind?

# %% tags=["parameters"]
import os

PRESET = os.environ.get("LEAKAGE_PRESET", "fast")  # smoke: seconds; fast: the README's models (~8 min of RL)
SFT_RUN = f"runs/passcode-{PRESET}"  # a `leakage train --task passcode` run; trained here if missing
RL_RUN = f"runs/passcode-{PRESET}-rl"  # reused when finished (`leakage rl ... --out` the same folder)

# %%
import json
from pathlib import Path

import pandas as pd

from leakage.config import EvictionConfig
from leakage.engine.model import load_model
from leakage.training.rl import RLConfig, build_trainer, logprob_agreement, rl_train, sft_source
from leakage.training.train import ensure_trained
from leakage.training.rollout import sample_rollouts
from leakage.training.tasks import TaskConfig, make_example

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
if not Path(SFT_RUN, "final").exists():
    SFT_RUN = str(ensure_trained(TaskConfig(task="passcode"), PRESET).parent)
config = RLConfig(task="passcode", preset=PRESET)
checkpoint, task = sft_source(SFT_RUN, "passcode")
model, tokenizer = load_model(checkpoint)
print(task)

# %% [markdown]
# ## A rollout
# The task gives the block digits, the passcode and the markers; the model samples its running sums, its
# mementos and the answer (marked `*`), under block eviction, at temperature 1. Each sampled token keeps
# the decoder's log-probability.

# %%
example = make_example(task, tokenizer, config.seed, 0)
rollout = sample_rollouts(model, tokenizer, [example], EvictionConfig(), temperature=1.0, seed=0)[0]
tokens = tokenizer.convert_ids_to_tokens(rollout.ids)
print(" ".join(f"{t}*" if chosen else t for t, chosen in zip(tokens, rollout.chosen)))
print(f"answer {rollout.answer} vs passcode {rollout.truth}: reward {rollout.reward():.2f}; peak KV {rollout.kv.peak}")

# %% [markdown]
# ## The loss sees what the decoder saw
# TRL pads the rollouts its own way; our trainer computes their log-probabilities under the memento mask
# with logical positions. They must equal the decoder's (a causal forward would not).

# %%
trainer = build_trainer(config, checkpoint, task, Path(RL_RUN + "-check"))
logprob_agreement(trainer, [0, 1])

# %% [markdown]
# ## Train (or reuse the finished run), then compare before and after

# %%
final = rl_train(config, SFT_RUN, RL_RUN, resume=True)
metrics = pd.DataFrame([json.loads(line) for line in Path(RL_RUN, "metrics.jsonl").read_text().splitlines()])
metrics.dropna(subset=["reward"])[["step", "reward", "kl", "rollout/answer_digits", "rollout/peak_kv"]].tail()

# %%
from leakage.analysis import rl_analysis
from leakage.analysis.probe import probe_preset
from leakage.plotting import plot_rl

analysis = Path(RL_RUN, "analysis.json")
if analysis.exists():  # written by `leakage rl` with the same checkpoints
    rows = pd.DataFrame(rl_analysis.analysis_rows(json.loads(analysis.read_text())["records"]))
else:  # the runner `leakage rl` calls; smoke: a linear probe for 5 epochs (seconds)
    spec = rl_analysis.RLAnalysisSpec(RL_RUN, probe=probe_preset("smoke" if PRESET == "smoke" else "mlp"))
    rows = rl_analysis.run(spec, out=Path(RL_RUN, "analysis")).rows
rows[rows["metric"].isin(["greedy_answer_digits_memento", "greedy_answer_digits_restart", "restart_drop_answer_digits",
                          "probe_masked_d1", "memento_text/passcode_digits", "memento_text/sum_digits_right"])]

# %%
from IPython.display import Image

plot_rl(metrics.to_dict("records"), rows, Path(RL_RUN, "rl.png"), "CISPO on the passcode task")
Image(str(Path(RL_RUN, "rl.png")))

# %% [markdown]
# On the `fast` model (docs/results.md, "RL"): the answer gains 13.6 points under memento decoding and
# nothing under restart (where the memento's KV is recomputed without the block), the memento text holds
# the passcode no more than chance, and the probe on the retained KV does not move: RL taught the model
# to read the channel better, not to write the passcode into its mementos.
