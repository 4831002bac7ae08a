"""KV accounting: per-step cache sizes, peak, AUC and bytes, and a model-free KV simulator.

Step convention: `cached_tokens[t]` is the number of KV entries the cache holds while position t is
first computed, t's own entry included: t + 1 less every range evicted before t (the evictions of
`leakage.memento.schedule`, the engine's timing by default). Without restart that is the number of keys query
t attends to, `mask[t].sum()` for the memento mask of the same config. Peak and AUC are taken over the
response steps (after the prompt), as the paper plots cache size against generated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from leakage.config import EvictionConfig
from leakage.memento.schedule import events_at
from leakage.memento.spans import SpanTracker, as_marker_ids


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, d_head: int, bytes_per_value: int = 2) -> int:
    """2 (K and V) x layers x KV heads x head dim x bytes per value (144 KB for Qwen3-8B in bf16)."""
    return 2 * n_layers * n_kv_heads * d_head * bytes_per_value


def kv_bytes_per_token_of(config, bytes_per_value: int = 2) -> int:
    """`kv_bytes_per_token` for an HF config (num_hidden_layers, num_key_value_heads, head_dim).

    Architectures without grouped-query attention (GPT-2, ...) have as many KV heads as heads."""
    d_head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return kv_bytes_per_token(config.num_hidden_layers, kv_heads, d_head, bytes_per_value)


@dataclass
class KVTrace:
    """Cache size at every position of one sequence (see module docstring for the step convention)."""

    cached_tokens: list[int]
    prompt_len: int

    @property
    def response_steps(self) -> list[int]:
        return self.cached_tokens[self.prompt_len:]

    @property
    def peak(self) -> int:
        """Largest cache size during the response (tokens); the prompt length if there is no response."""
        return max(self.response_steps, default=self.prompt_len)

    @property
    def auc(self) -> int:
        """Area under cache size vs generated tokens (token x steps)."""
        return sum(self.response_steps)

    def peak_bytes(self, bytes_per_token: int) -> int:
        return self.peak * bytes_per_token


def simulate_kv(ids: Sequence[int], tokenizer, eviction: EvictionConfig, prompt_len: int | None = None,
                plain_prompt: bool = True, strict: bool = True) -> KVTrace:
    """Replay a token sequence through the block tracker, without a model, and count cached tokens per step.

    Agrees step by step with the decoder's measured cache sizes. O(T) time. `plain_prompt` and
    `strict` are the tracker's (the decoder replays generated sequences with both False).
    """
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    tracker = SpanTracker(as_marker_ids(tokenizer), prompt_len=prompt_len, plain_prompt=plain_prompt, strict=strict)
    counts: list[int] = []
    cached = 0
    for position, token_id in enumerate(ids):
        tracker.feed(token_id)
        events = events_at(tracker.blocks, tracker.block_index[-1], position, eviction)
        cached -= sum(e.size for e in events.evictions if e.before == position)
        cached += 1
        counts.append(cached)
        cached -= sum(e.size for e in events.evictions if e.before > position)
    return KVTrace(cached_tokens=counts, prompt_len=tracker.spans().prompt_len)


def uniform_trace_peaks(prompt: int, n_blocks: int, block_tokens: int, memento_tokens: int, answer_tokens: int,
                        mask_delimiters: bool = False, summary_end_sees_block: bool = False) -> tuple[int, int]:
    """Analytic (vanilla, memento) peak cache sizes for a uniform trace, `keep_last_n_blocks=0`.

    The trace is `prompt` tokens, `<think>`, n blocks of b reasoning tokens each followed by an m-token
    memento (each block + memento is b + m + 4 tokens with the four delimiters), `</think>`, and `a`
    answer tokens; T = prompt + 1 + n(b + m + 4) + 1 + a.

    Vanilla keeps everything, so its peak is the last step: T.
    Memento keeps, per completed block, its memento with both summary delimiters plus the two block
    delimiters unless they are masked: r = m + 4 (Qwen3 style) or r = m + 2 (`mask_delimiters`).
    The cache is largest either just before the last block is evicted, or at the last answer token
    (prompt + 1 + n r + 1 + a). The engine evicts before feeding `<|summary_end|>`, so the largest
    pre-eviction step is the last memento token: prompt + 1 + (n - 1) r + (b + m + 3); with
    `summary_end_sees_block` it is the `<|summary_end|>` itself, one more:

        peak_memento = prompt + 1 + (n - 1) r + max(b + m + 3 (+1), r + 1 + a)

    For b much larger than m and a, the ratio T / peak_memento tends to n (b + m + 4) / (b + n r).
    """
    r = memento_tokens + (2 if mask_delimiters else 4)
    total = prompt + 1 + n_blocks * (block_tokens + memento_tokens + 4) + 1 + answer_tokens
    before_eviction = block_tokens + memento_tokens + (4 if summary_end_sees_block else 3)
    memento = prompt + 1 + (n_blocks - 1) * r + max(before_eviction, r + 1 + answer_tokens)
    return total, memento
