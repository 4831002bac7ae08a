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
