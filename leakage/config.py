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
