"""Tokenizers for the pipeline: a local HF tokenizer directory, or a deterministic stand-in BPE.

The pipeline measures everything (fragment sizes, the 200-token block minimum, memento and block sizes,
KV cache sizes) in tokens of whatever tokenizer it is given. Without network access no real model
tokenizer (e.g. Qwen3's) can be downloaded, so `train_stand_in_tokenizer` trains a byte-level BPE on
given texts: same texts and vocabulary size, same tokenizer. Its counts are a stand-in, not Qwen3's;
outputs name the tokenizer they used (`tokenizer_label`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

from leakage.config import MEMENTO_TOKENS, THINK_END, THINK_START

STAND_IN_VOCAB_SIZE = 2048
STAND_IN_NAME = "stand-in-bpe"
_EOS = "<|endoftext|>"


def train_stand_in_tokenizer(texts: Sequence[str], vocab_size: int = STAND_IN_VOCAB_SIZE):
    """A byte-level BPE (GPT-2 style pre-tokenisation) trained on `texts`, wrapped as `PreTrainedTokenizerFast`.

    Deterministic for the same texts in the same order. Carries `<|endoftext|>` (eos), `<think>`,
    `</think>` and the four Memento markers as special tokens, so `MementoTrace.to_ids` works with it.
    Merges need to occur at least twice, so a small corpus may give fewer than `vocab_size` tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("the stand-in tokenizer needs at least one training text")
    specials = [_EOS, THINK_START, THINK_END, *MEMENTO_TOKENS]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(list(texts), trainer=trainer)
    digest = hashlib.sha256(core.to_str().encode("utf-8")).hexdigest()[:12]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=_EOS, pad_token=_EOS,
                                        additional_special_tokens=specials[1:])
    tokenizer.name_or_path = f"{STAND_IN_NAME}-{vocab_size}-{digest}"
    return tokenizer


def corpus_texts(paths: Iterable[str | Path]) -> list[str]:
    """Every string value in JSON / JSONL files, in file order then document order (training text)."""
    texts: list[str] = []

    def walk(value):
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for path in paths:
        path = Path(path)
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            for lineno, line in enumerate(raw.splitlines(), start=1):
                if line.strip():
                    try:
                        walk(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}, line {lineno}: invalid JSON ({err.msg})") from None
        else:
            walk(json.loads(raw))
    return texts


def load_tokenizer(path: str | Path):
    """A tokenizer from a local HF directory (never downloads), Memento markers added if missing."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a tokenizer directory (this toolkit never downloads tokenizers)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ensure_memento_markers(tokenizer)
    return tokenizer


def ensure_memento_markers(tokenizer) -> list[str]:
    """Add `<think>`, `</think>` and the Memento markers as special tokens where missing; returns those added."""
    from transformers import AddedToken

    missing = [t for t in (THINK_START, THINK_END, *MEMENTO_TOKENS)
               if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    return missing


def token_counter(tokenizer):
    """len(ids) of a text on its own, without special tokens added."""
    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))
    return count


def tokenizer_label(tokenizer) -> str:
    """Name recorded in outputs: the stand-in's name (vocab size + content hash) or the directory path."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the sorted vocabulary (a tokenizer's identity for checkpoint compatibility)."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def span_token_counts(text: str, starts: Sequence[int], tokenizer) -> list[int]:
    """Tokens per span of `text` (span i = text[starts[i]:starts[i + 1]]), a lower bound on what the span
    adds to any block built from whole spans, stripped and tokenised on its own (as `MementoTrace.to_ids`
    tokenises blocks).

    The text is tokenised once. A token counts for the span holding its first non-whitespace character;
    a whitespace-only token counts for the span it starts in if it starts before that span's last
    non-whitespace character, and for no span otherwise (the gap between two sentences, which a block
    edge strips). Spans tile the text at whitespace -> non-whitespace transitions, so a token's
    non-whitespace characters never straddle two spans. The bound can only fail where a BPE splits a
    block's first word more finely in context (after a space) than alone; `process_trace` checks it.
    Needs a fast (Rust-backed) tokenizer for offset mappings; raises TypeError otherwise.
    """
    import bisect
    import re

    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("span_token_counts needs a fast (Rust-backed) HF tokenizer for offset mappings")
    counts = [0] * len(starts)
    if not starts:
        return counts
    ends = [*starts[1:], len(text)]
    last_visible = [start + len(text[start:end].rstrip()) for start, end in zip(starts, ends)]
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for start, end in offsets:
        first = re.search(r"\S", text[start:end])
        if first is not None:
            counts[max(bisect.bisect_right(starts, start + first.start()) - 1, 0)] += 1
        else:
            span = max(bisect.bisect_right(starts, start) - 1, 0)
            if start < last_visible[span]:
                counts[span] += 1
    return counts
