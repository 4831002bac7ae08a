"""Sampled rollouts through the eviction decoder, their rule-based rewards, and maj@k.

A rollout is the free-running evaluation (`leakage.training.evaluate.free_run`) with sampling: the task gives
the prompt, every block's digits, the passcode and the Memento markers (the environment's tokens),
and the model samples the running sums, the mementos and the answer (`model_written`) at the rollout
temperature, under block eviction exactly as at inference. Each model-written token keeps the
log-probability the decoder gave it (log-softmax of logits / temperature), which is what RL's
importance weights are measured against.

    rollouts = sample_rollouts(model, tokenizer, examples, EvictionConfig(), temperature=1.0, seed=0)
    rollouts[0].answer, rollouts[0].reward("digit_share"), rollouts[0].kv.peak

Because the layout is the example's, a rollout's blocks and mementos have the example's lengths: RL
on these rollouts can change what the model writes, not how long it writes (`block_lengths` records
them; `leakage.analysis.rl_analysis` measures the free-format behaviour separately).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from leakage.config import EvictionConfig
from leakage.engine.decode import Decoder, force_policy
from leakage.training.evaluate import Accuracy, model_written
from leakage.memento.kv import KVTrace
from leakage.memento.spans import as_marker_ids, parse_spans
from leakage.training.tasks import Example


REWARDS = ("digit_share", "exact")
"""RL's rule-based rewards: digit_share, the share of answer digits written right (dense; the paper's
probe score); exact, 1 when the whole answer is right."""



@dataclass
class Rollout:
    """One sampled trace of an example.

    ids: prompt + completion token ids (the example's layout). chosen[p]: the model sampled position p
    (False: the environment gave it). logprobs[p]: the sampled token's log-probability under the
    decoder (0.0 where the environment gave the token). kv: the cache size at every position.
    """

    example: Example
    ids: list[int]
    chosen: list[bool]
    logprobs: list[float]
    kv: KVTrace

    @property
    def prompt_len(self) -> int:
        return self.example.prompt_len

    @property
    def answer(self) -> tuple[int, ...]:
        """The answer tokens the model wrote."""
        return tuple(self.ids[p] for p in self.example.answer_positions)

    @property
    def truth(self) -> tuple[int, ...]:
        return tuple(self.example.ids[p] for p in self.example.answer_positions)

    @property
    def digits_right(self) -> int:
        return sum(a == t for a, t in zip(self.answer, self.truth))

    def reward(self, kind: str = "digit_share") -> float:
        """The rule-based reward (`REWARDS`)."""
        if kind == "digit_share":
            return self.digits_right / len(self.truth)
        if kind == "exact":
            return float(self.answer == self.truth)
        raise ValueError(f"unknown reward {kind!r}; choose one of {REWARDS}")

    @property
    def completion(self) -> tuple[list[int], list[int], list[float]]:
        """(completion ids, env mask: 1 where the model sampled, log-probs), from the prompt's end."""
        n = self.prompt_len
        return self.ids[n:], [int(c) for c in self.chosen[n:]], self.logprobs[n:]


def block_lengths(ids: list[int], tokenizer) -> list[int]:
    """Non-marker tokens in each closed block (what the engine's `max_block_tokens` cap counts)."""
    markers = as_marker_ids(tokenizer)
    spans = parse_spans(ids, markers, strict=False)
    return [markers.block_tokens(ids[b.block_start + 1:b.block_end]) for b in spans.blocks if b.block_end is not None]


def memento_lengths(ids: list[int], tokenizer) -> list[int]:
    """Tokens between `<|summary_start|>` and `<|summary_end|>` of each closed memento."""
    spans = parse_spans(ids, as_marker_ids(tokenizer), strict=False)
    return [b.summary_end - b.summary_start - 1 for b in spans.blocks
            if b.summary_start is not None and b.summary_end is not None]


def check_block_cap(examples: list[Example], tokenizer, max_block_tokens: int | None) -> None:
    """Refuse a block length cap that would cut the environment's given input: in these tasks the
    block's length is the example's, so a cap below it would force `<|block_end|>` inside given text."""
    if max_block_tokens is None:
        return
    for i, example in enumerate(examples):
        for block, n in enumerate(block_lengths(example.ids, tokenizer)):
            if n > max_block_tokens:
                raise ValueError(f"max_block_tokens={max_block_tokens} would cut block {block} of example {i} "
                                 f"({n} tokens given by the task); use a cap of at least {n}")


@torch.no_grad()
def sample_rollouts(model, tokenizer, examples: list[Example], eviction: EvictionConfig = EvictionConfig(),
                    temperature: float = 1.0, seed: int = 0) -> list[Rollout]:
    """One rollout per example (repeat an example for a group), all decoded in one batch."""
    if not temperature > 0:
        raise ValueError(f"rollouts sample: temperature must be > 0, got {temperature}")
    own = [model_written(e) for e in examples]
    logprobs: list[dict[int, float]] = [{} for _ in examples]
    generator = torch.Generator().manual_seed(seed)

    def sample(row: int, position: int, logits: torch.Tensor) -> int:
        logp = torch.log_softmax(logits.float() / temperature, -1)
        token = int(torch.multinomial(logp.exp(), 1, generator=generator))
        logprobs[row][position] = float(logp[token])
        return token

    decoder = Decoder(model, tokenizer, eviction, [e.ids[:e.prompt_len] for e in examples])
    results = decoder.run(force_policy([e.ids for e in examples], lambda row, p: p in own[row], sample))
    return [Rollout(example=e, ids=r.ids, chosen=[p in own[b] for p in range(len(r.ids))],
                    logprobs=[logprobs[b].get(p, 0.0) for p in range(len(r.ids))], kv=r.kv)
            for b, (e, r) in enumerate(zip(examples, results))]


def majority_accuracy(groups: list[list[Rollout]], k: int) -> Accuracy:
    """maj@k: per example, the most frequent answer among its first k rollouts (ties: the answer seen
    first) is right."""
    hits = []
    for group in groups:
        if len(group) < k:
            raise ValueError(f"maj@{k} needs {k} rollouts per example, got {len(group)}")
        votes = Counter(r.answer for r in group[:k])
        top = max(votes.values())
        winner = next(r.answer for r in group[:k] if votes[r.answer] == top)
        hits.append(winner == group[0].truth)
    return Accuracy.of_examples(hits)
