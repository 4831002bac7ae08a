"""Small frozen dataclasses shared across the package, and their named presets.

The vocabulary every wing shares lives here: the marker tokens of the Memento format, the synthetic
vocabulary, the model presets and the eviction spec (`EvictionConfig`, with named presets). Modules
downstream take these values; they never hard-code token strings or sizes. A config that belongs to one
analysis or one trainer lives with it (`ProbeSpec` in `leakage.analysis.probing`, `RLConfig` in
`leakage.training.rl`, ...).
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

SYNTHETIC_WORDS: tuple[str, ...] = (
    *"0123456789",
    "+", "=", "?", ":", ",", ".", ";", "(", ")", "-",
    "sum", "digits", "digit", "block", "of", "in", "is", "the", "what", "answer", "passcode", "recall",
    "question", "mod", "total", "task", "add", "running", "value", "position", "code", "note",
    # the paper's initialisation words for the special tokens
    "start", "begin", "section", "step", "end", "finish", "done", "summary", "summarize", "brief", "recap",
    "overview", "complete",
)
"""Words of the synthetic tasks' vocabulary (`leakage.engine.model.build_tokenizer`), in id order after the
special tokens: append new words at the end, so existing checkpoints keep their ids."""


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
        paper's unreleased training mask may have used it). See `leakage.memento.schedule` for every rule.
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
