"""Small frozen dataclasses shared across the package, and their named presets.

Everything that defines *what a run is* lives here: the marker tokens of the Memento format and the
model presets. Modules downstream take these values; they never hard-code token strings or sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_START = "<|block_start|>"
BLOCK_END = "<|block_end|>"
SUMMARY_START = "<|summary_start|>"
SUMMARY_END = "<|summary_end|>"
THINK_START = "<think>"
THINK_END = "</think>"

MEMENTO_TOKENS = (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END)
"""The four special tokens Memento adds to a vocabulary, in trace order."""

# The paper's word lists for initialising the new embeddings (mean of these + N(0, 0.01)).
INIT_WORDS = {
    BLOCK_START: ("block", "start", "begin", "section", "step"),
    BLOCK_END: ("block", "end", "finish", "section", "done"),
    SUMMARY_START: ("summary", "summarize", "brief", "recap", "overview"),
    SUMMARY_END: ("summary", "end", "finish", "done", "complete"),
}
INIT_NOISE_STD = 0.01


@dataclass(frozen=True)
class ModelPreset:
    """Size of a Qwen3-architecture causal LM built from scratch (RoPE, GQA, QK-norm, tied embeddings)."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    max_positions: int = 4096
    rope_theta: float = 10_000.0


MODEL_PRESETS: dict[str, ModelPreset] = {
    # The paper's toy scale: 4 layers, d_model 128, ~0.8M parameters with the synthetic vocabulary.
    "tiny": ModelPreset(n_layers=4, d_model=128, n_heads=4, n_kv_heads=2, d_head=32, d_mlp=384),
    # Larger but still trainable on a laptop CPU (~4.7M parameters).
    "small": ModelPreset(n_layers=6, d_model=256, n_heads=8, n_kv_heads=4, d_head=32, d_mlp=768),
}


def model_preset(name: str) -> ModelPreset:
    """Look up a model preset by name; the error lists the names that exist."""
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}") from None


@dataclass(frozen=True)
class EvictionConfig:
    """Which KV entries Memento decoding evicts, and when: the official engine's block-masking options.

    keep_last_n_blocks: -1 no eviction (vanilla); 0 evict every completed block; N keep the N most
        recently completed blocks.
    mask_delimiters: evict `<|block_start|>`/`<|block_end|>` with the block (Phi-4) or keep them (Qwen3).
    restart: the restart ablation. Evicts `<|block_start|>` .. `<|block_end|>` inclusive and recomputes
        from the `<|summary_start|>` of the block whose summary just ended, without the evicted block.
    max_block_tokens: force `<|block_end|>` once the open block holds this many non-marker tokens.
    keep_last_block_for_answer: (keep_last_n_blocks=0 only, as in the engine) evict at the next
        `<|block_start|>` instead of at `<|summary_end|>`, so the last block stays visible to the answer.
    summary_end_sees_block: NOT the engine. Evictions take effect one query later, so the
        `<|summary_end|>` row still sees the block it closes (this package's earlier timing; the
        paper's unreleased training mask may have used it). See `leakage.schedule` for every rule.
    """

    keep_last_n_blocks: int = 0
    mask_delimiters: bool = False
    restart: bool = False
    max_block_tokens: int | None = None
    keep_last_block_for_answer: bool = False
    summary_end_sees_block: bool = False

    def __post_init__(self):
        if self.keep_last_n_blocks < -1:
            raise ValueError(f"keep_last_n_blocks must be -1, 0 or N > 0, got {self.keep_last_n_blocks}")
        if self.max_block_tokens is not None and self.max_block_tokens < 1:
            raise ValueError(f"max_block_tokens must be a positive int or None, got {self.max_block_tokens}")
        if self.restart and self.keep_last_n_blocks == -1:
            raise ValueError("restart needs eviction (keep_last_n_blocks >= 0)")

    @property
    def evicts(self) -> bool:
        return self.keep_last_n_blocks != -1


EVICTION_PRESETS: dict[str, EvictionConfig] = {
    "vanilla": EvictionConfig(keep_last_n_blocks=-1),
    "memento": EvictionConfig(keep_last_n_blocks=0),  # the paper's setting, Qwen3 delimiters
    "memento_phi4": EvictionConfig(keep_last_n_blocks=0, mask_delimiters=True),
    "restart": EvictionConfig(keep_last_n_blocks=0, restart=True),
    "memento_summary_end_sees_block": EvictionConfig(keep_last_n_blocks=0, summary_end_sees_block=True),
}


@dataclass(frozen=True)
class ProbeExperiment:
    """What one probing run measures.

    n_blocks: blocks per trace (sites run up to the last block).
    passcode_block: the block holding the passcode (k).
    kind: probe kind (mlp or linear).
    pooling: concat (per-token), mean or last.
    per_layer: also fit every layer alone (direct and masked d=1).
    mdl: also measure the online codelength (MDL) of the masked d=1 task and of its control task.
    precision: also capture with the model in bfloat16 (the engine's precision).
    max_keep: the keep_last_n_blocks sweep runs 1 .. max_keep (0: no sweep).
    checkpoints: training checkpoints between step 0 and the final model in the checkpoint sweep
        (0: no sweep; needs the checkpoint's `leakage train` run folder).
    seed: probe seed (splits and initialisation).
    """

    n_blocks: int = 10
    passcode_block: int = 1
    kind: str = "mlp"
    pooling: str = "concat"
    per_layer: bool = True
    mdl: bool = True
    precision: bool = True
    max_keep: int = 2
    checkpoints: int = 4
    seed: int = 0


@dataclass(frozen=True)
class CausalExperiment:
    """The causal experiments on one checkpoint of the passcode task.

    n: evaluation pairs (validation passcodes).
    reference: reference examples (training passcodes): half fit LEACE and the random control, half the probe.
    strengths: comma-separated erasure strengths (0 = none, 1 = full LEACE).
    bootstrap: example-bootstrap resamples for every interval.
    seed: seed of the examples, twins, random subspaces and probes.
    """

    n: int = 512
    reference: int = 4096
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    bootstrap: int = 1000
    seed: int = 0


REWARDS = ("digit_share", "exact")
"""RL's rule-based rewards: digit_share, the share of answer digits written right (dense; the paper's
probe score); exact, 1 when the whole answer is right."""


@dataclass(frozen=True)
class RLPreset:
    """How long and how wide to run RL. A step is one optimizer step on one batch of fresh rollouts."""

    steps: int
    prompts_per_step: int
    group_size: int  # G rollouts per prompt
    learning_rate: float
    warmup_steps: int  # linear warmup from 0 (Adam's first steps are sign-sized)
    save_every: int
    eval_every: int  # validation accuracy (greedy, free-running) during training
    n_val: int  # validation examples for that curve
    n_eval: int  # examples of the before/after analysis
    eval_samples: int  # rollouts per analysis example (pass@1, maj@1..k)
    probe_traces: int  # traces of the before/after passcode probe

    def __post_init__(self):
        for name in ("steps", "prompts_per_step", "group_size", "save_every", "eval_every", "n_val", "n_eval",
                     "eval_samples", "probe_traces"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (advantages are relative to the group), got "
                             f"{self.group_size}")


RL_PRESETS: dict[str, RLPreset] = {
    "smoke": RLPreset(steps=2, prompts_per_step=2, group_size=4, learning_rate=1e-3, warmup_steps=0, save_every=1,
                      eval_every=1, n_val=4, n_eval=4, eval_samples=2, probe_traces=200),
    # ~3.3 s per step on 2 CPU cores for a 10-block task; the analysis adds ~8 minutes
    "fast": RLPreset(steps=150, prompts_per_step=8, group_size=8, learning_rate=5e-5, warmup_steps=10, save_every=25,
                     eval_every=25, n_val=64, n_eval=256, eval_samples=8, probe_traces=10_000),
}


@dataclass(frozen=True)
class RLConfig:
    """One RL run.

    task: the task rewarded (digits, recall or passcode); its shape comes from the SFT run's config.
    preset: smoke or fast (`RL_PRESETS`).
    reward: digit_share (share of answer digits right) or exact (1 when the whole answer is right).
    beta: KL penalty against the SFT checkpoint (the paper: 0.001).
    epsilon_high: CISPO's upper bound on the detached importance weight (ScaleRL's 5.0).
    num_iterations: optimisation passes over each batch of rollouts (1: on-policy, weight exactly 1).
    temperature: rollout sampling temperature (the paper: 1.0).
    max_block_tokens: the block length cap (none: no cap); refused below the task's given block length.
    seed: rollouts, data order and initialisation of the optimizer state.
    """

    task: str = "digits"
    preset: str = "fast"
    reward: str = "digit_share"
    beta: float = 0.001
    epsilon_high: float = 5.0
    num_iterations: int = 1
    temperature: float = 1.0
    max_block_tokens: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.preset not in RL_PRESETS:
            raise KeyError(f"unknown RL preset {self.preset!r}; choose one of {sorted(RL_PRESETS)}")
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; choose one of {REWARDS}")
        if self.beta < 0 or self.epsilon_high <= 0 or self.num_iterations < 1 or not self.temperature > 0:
            raise ValueError("beta must be >= 0, epsilon_high > 0, num_iterations >= 1 and temperature > 0")

    @property
    def plan(self) -> RLPreset:
        return RL_PRESETS[self.preset]
