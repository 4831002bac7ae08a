"""Boundary scores 0-3: how good a place each sentence boundary is to end a block.

A scorer maps the exact sentences of a split (trailing whitespace included, as `SentenceSplit.sentences`
returns them) to one score per boundary; boundary j lies between sentences j and j + 1.

    0  never break here (mid-derivation, after ':' or '=', before "Therefore ...")
    1  weak break (an ordinary sentence or line boundary)
    2  good break (a completed thought at a paragraph break, or a new step begins)
    3  strong break (a strategy pivot: "Alternatively", "Wait", "Let me check", ...)

`RuleScorer` is the offline default and applies the paper's rules in the order of `RuleScorer.score_one`.
`LLMScorer` asks an OpenAI-compatible endpoint, in windows of boundaries, in two passes with coprime
window sizes, and averages the passes (so its scores are multiples of 0.5).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol, Sequence

from leakage.pipeline.llm import ChatClient, load_prompt, render_prompt
from leakage.pipeline.sentences import is_math_line

MAX_SCORE = 3


class BoundaryScorer(Protocol):
    def score_boundaries(self, sentences: Sequence[str]) -> list[float]:
        """One score in [0, 3] per boundary (len(sentences) - 1 of them)."""

    def describe(self) -> dict:
        """Settings that determine the scores (recorded in outputs and checkpoint fingerprints)."""


@dataclass(frozen=True)
class RuleScorerConfig:
    """Phrase lists of the rule scorer; matched case-insensitively at the start of a sentence."""

    pivot_phrases: tuple[str, ...] = (
        "Alternatively", "Wait", "But wait", "Hmm, wait", "Hold on", "Actually, wait", "Let me check",
        "Let me verify", "Let me double-check", "Let me double check", "Let me recheck", "Let me re-examine",
        "Let me reconsider", "Let me try another", "Let me think differently", "Let me start over",
        "Another approach", "Another way", "Another idea", "On second thought", "Instead",
    )
    step_phrases: tuple[str, ...] = (
        "First", "Second", "Third", "Next", "Now", "Finally", "Let me", "Let's", "Step", "To find", "To solve",
        "Okay", "OK", "So the answer", "The answer",
    )
    conclusion_phrases: tuple[str, ...] = ("Therefore", "Thus", "Hence", "So")
    setup_phrases: tuple[str, ...] = ("Suppose", "Assume", "Consider", "Let's say")


def _starts_with(sentence: str, phrases: Sequence[str]) -> bool:
    head = sentence.lstrip(" \t\n*_#>-").lower()
    return any(head.startswith(p.lower()) and not head[len(p):len(p) + 1].isalnum() for p in phrases)


_OPEN_ENDING = re.compile(r"(?:[:=,+\-*/(\[{\u21d2\u2192]|\\\\|\bthen|\band|\bof|\bby|\bis|\bto)\s*$")
_OPERATOR_START = re.compile(r"[=+\-*/)\]}\u21d2\u2192]")


@dataclass(frozen=True)
class RuleScorer:
    """The paper's boundary rules, offline and deterministic."""

    config: RuleScorerConfig = RuleScorerConfig()

    def describe(self) -> dict:
        return {"scorer": "rule"}

    def score_boundaries(self, sentences: Sequence[str]) -> list[float]:
        return [self.score_one(sentences[j], sentences[j + 1]) for j in range(len(sentences) - 1)]

    def score_one(self, previous: str, following: str) -> int:
        """Score the boundary between two consecutive sentences; the first rule that applies decides.

        0: `previous` ends with ':', '=', an operator, a comma or a connective (mid-derivation); or
           `following` starts with an operator or '='; or both are math lines; or `following` starts
           with a conclusion word (Therefore, Thus, Hence, So); or `previous` sets up an assumption
           (Suppose, Assume, Consider).
        3: `following` starts with a strategy pivot (Alternatively, Wait, Let me check, ...).
        2: a paragraph break (blank line) after a sentence ending in '.', '!' or '?', or a paragraph
           break before a new step (First, Next, Now, Let me, ...).
        1: a paragraph break or a sentence ending in '.', '!', '?'.
        0: anything else (a line break inside a list or a sentence).
        """
        c = self.config
        body = previous.rstrip()
        head = following.lstrip()
        mid_derivation = (_OPEN_ENDING.search(body) or _OPERATOR_START.match(head)
                          or (is_math_line(previous) and is_math_line(following)))
        if (mid_derivation or _starts_with(following, c.conclusion_phrases)
                or _starts_with(previous, c.setup_phrases)):
            return 0
        if _starts_with(following, c.pivot_phrases):
            return 3
        paragraph = "\n\n" in re.sub(r"[ \t]+", "", previous[len(body):])
        ends_sentence = bool(re.search(r"[.!?][\"')\]]*$", body)) or body.endswith(("\\)", "\\]", "$$"))
        if paragraph and (ends_sentence or _starts_with(following, c.step_phrases)):
            return 2
        if paragraph or ends_sentence:
            return 1
        return 0


# ---------------------------------------------------------------------------------------------
# LLM scorer


@dataclass(frozen=True)
class LLMScorerConfig:
    """windows: boundaries per request in the two passes; coprime, so window edges rarely coincide.

    json_attempts: requests per window until the reply is valid JSON with one score per boundary.
    """

    windows: tuple[int, int] = (16, 11)
    json_attempts: int = 3
    system_prompt: str = "score_system.txt"
    user_prompt: str = "score_user.txt"

    def __post_init__(self):
        if len(self.windows) != 2 or min(self.windows) < 1:
            raise ValueError(f"windows must be two positive sizes, got {self.windows}")
        if math.gcd(*self.windows) != 1:
            raise ValueError(f"window sizes must be coprime, got {self.windows}")


def windows_of(n_boundaries: int, size: int) -> list[range]:
    """Consecutive windows of `size` boundaries covering 0..n_boundaries - 1 (the last may be shorter)."""
    return [range(lo, min(lo + size, n_boundaries)) for lo in range(0, n_boundaries, size)]


def render_window(sentences: Sequence[str], window: range) -> str:
    """Sentences window.start .. window.stop (inclusive), a '<<<BOUNDARY j>>>' line at each boundary j."""
    parts = []
    for j in window:
        parts += [sentences[j].strip(), f"\n<<<BOUNDARY {j}>>>\n"]
    parts.append(sentences[window.stop].strip())
    return "".join(parts)


def _validate_scores(expected: int):
    def validate(obj) -> list[int]:
        if not isinstance(obj, dict) or "scores" not in obj:
            raise ValueError('expected a JSON object {"scores": [...]}')
        scores = obj["scores"]
        if not isinstance(scores, list) or len(scores) != expected:
            got = len(scores) if isinstance(scores, list) else type(scores).__name__
            raise ValueError(f"expected exactly {expected} scores, got {got}")
        for s in scores:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s not in (0, 1, 2, 3):
                raise ValueError(f"every score must be one of 0, 1, 2, 3; got {s!r}")
        return [int(s) for s in scores]
    return validate


@dataclass
class LLMScorer:
    """Boundary scores from an LLM judge (module docstring); errors name the window that failed."""

    client: ChatClient
    config: LLMScorerConfig = LLMScorerConfig()

    def describe(self) -> dict:
        return {"scorer": "llm", "model": self.client.config.model, "windows": list(self.config.windows)}

    def score_pass(self, sentences: Sequence[str], window_size: int) -> list[int]:
        """One pass: every boundary scored exactly once, in windows of `window_size` boundaries."""
        system = load_prompt(self.config.system_prompt)
        template = load_prompt(self.config.user_prompt)
        scores: list[int] = []
        for window in windows_of(len(sentences) - 1, window_size):
            labels = "\n".join(f"BOUNDARY {j}: between sentence {j} and sentence {j + 1}" for j in window)
            user = render_prompt(template, text=render_window(sentences, window), boundaries=labels,
                                 count=str(len(window)))
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            where = f"boundary window {window.start}..{window.stop - 1} (window size {window_size})"
            scores += self.client.chat_json(messages, _validate_scores(len(window)),
                                            attempts=self.config.json_attempts, where=where)
        return scores

    def score_boundaries(self, sentences: Sequence[str]) -> list[float]:
        if len(sentences) < 2:
            return []
        first, second = (self.score_pass(sentences, w) for w in self.config.windows)
        return [(a + b) / 2 for a, b in zip(first, second)]
