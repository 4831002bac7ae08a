"""Mementos: compress each block of reasoning into a short note.

`ExtractiveCompressor` (offline, deterministic) keeps the block's most informative pieces: sentences
and clauses with equations, numbers and conclusions, up to about 10-20% of the block's tokens.
`LLMCompressor` asks an OpenAI-compatible endpoint for a memento, has a judge score it 0-10, and feeds
the judge's critique back (at most 2 feedback rounds) until a memento scores >= 8, as in the paper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, Sequence

from leakage.pipeline.llm import ChatClient, load_prompt, render_prompt
from leakage.pipeline.sentences import TokenCounter, default_token_count, is_math_line, naive_split


@dataclass(frozen=True)
class CompressionResult:
    """A memento; `judge_scores` holds one score per judged attempt, `passed` is None when nothing judged it."""

    memento: str
    feedback_rounds: int = 0
    judge_scores: tuple[int, ...] = ()
    passed: bool | None = None


class Compressor(Protocol):
    def compress_blocks(self, blocks: Sequence[str], problem: str) -> list[CompressionResult]:
        """One memento per block, in order (later blocks may see earlier mementos)."""

    def describe(self) -> dict:
        """Settings that determine the mementos (recorded in outputs and checkpoint fingerprints)."""


# ---------------------------------------------------------------------------------------------
# extractive


@dataclass(frozen=True)
class ExtractiveConfig:
    """target_ratio: stop adding pieces once the memento has this share of the block's tokens.

    max_ratio: never add a piece that would take the memento past this share (one piece is always kept,
    even when it alone is longer).
    """

    target_ratio: float = 0.15
    max_ratio: float = 0.20
    conclusion_words: tuple[str, ...] = (
        "therefore", "thus", "hence", "so", "answer", "result", "conclude", "conclusion", "final", "finally",
        "means", "gives", "equals", "solution", "correct", "wrong", "incorrect", "verified", "check",
    )

    def __post_init__(self):
        if not 0 < self.target_ratio <= self.max_ratio <= 1:
            raise ValueError(f"need 0 < target_ratio <= max_ratio <= 1, got {self.target_ratio}, {self.max_ratio}")


def _pieces(block: str, count: TokenCounter, max_tokens: float) -> list[str]:
    """Sentences and lines of the block; pieces over `max_tokens` are cut further at ', ' and '; '."""
    pieces = []
    for sentence in naive_split(block).sentences:
        sentence = " ".join(sentence.split())
        if not sentence:
            continue
        if count(sentence) <= max_tokens:
            pieces.append(sentence)
        else:
            pieces += [p for p in re.split(r"(?<=[,;])\s+", sentence) if p]
    return pieces


def piece_score(piece: str, is_last: bool, config: ExtractiveConfig = ExtractiveConfig()) -> int:
    """2 for an equation or math, 1 for a number, 2 for a conclusion word or \\boxed, 1 for the block's last piece."""
    words = r"\b(?:" + "|".join(map(re.escape, config.conclusion_words)) + r")\b"
    equation = "=" in piece or is_math_line(piece)
    conclusion = bool(re.search(words, piece, re.I)) or "\\boxed" in piece
    return 2 * equation + bool(re.search(r"\d", piece)) + 2 * conclusion + is_last


def extractive_selection(block: str, count_tokens: TokenCounter | None = None,
                         config: ExtractiveConfig = ExtractiveConfig()) -> tuple[list[str], list[int]]:
    """The block's pieces (sentences, lines, or clauses of long ones; whitespace collapsed) and the
    indices of those kept, ascending.

    Pieces are ranked by `piece_score`, ties to the later piece (results come last), then added while
    the memento stays within `max_ratio` of the block's tokens, until it reaches `target_ratio`. When
    no piece fits, the best-ranked one is kept alone.
    """
    count = count_tokens or default_token_count
    total = count(block)
    if total == 0:
        raise ValueError("cannot compress an empty block")
    target, limit = config.target_ratio * total, config.max_ratio * total
    pieces = _pieces(block, count, limit)
    sizes = [count(p) for p in pieces]
    ranked = sorted(range(len(pieces)), key=lambda i: (-piece_score(pieces[i], i == len(pieces) - 1, config), -i))
    chosen, used = [], 0
    for i in ranked:
        if used >= target:
            break
        if used + sizes[i] <= limit:
            chosen.append(i)
            used += sizes[i]
    return pieces, sorted(chosen or ranked[:1])


def extractive_memento(block: str, count_tokens: TokenCounter | None = None,
                       config: ExtractiveConfig = ExtractiveConfig()) -> str:
    """Deterministic extractive memento of one block: the kept pieces of `extractive_selection`, in block order."""
    pieces, chosen = extractive_selection(block, count_tokens, config)
    return " ".join(pieces[i] for i in chosen)


@dataclass(frozen=True)
class ExtractiveCompressor:
    """`extractive_memento` for every block; sizes in tokens of `count_tokens` (default: words + punctuation)."""

    count_tokens: TokenCounter | None = None
    config: ExtractiveConfig = ExtractiveConfig()

    def describe(self) -> dict:
        return {"compressor": "extractive", "target_ratio": self.config.target_ratio,
                "max_ratio": self.config.max_ratio}

    def compress_blocks(self, blocks: Sequence[str], problem: str = "") -> list[CompressionResult]:
        return [CompressionResult(extractive_memento(b, self.count_tokens, self.config)) for b in blocks]


# ---------------------------------------------------------------------------------------------
# LLM compressor with a judge


@dataclass(frozen=True)
class JudgeLoopConfig:
    """pass_threshold: judge score (0-10) a memento needs; max_feedback_rounds: rewrites after the first try."""

    pass_threshold: int = 8
    max_feedback_rounds: int = 2
    json_attempts: int = 3

    def __post_init__(self):
        if not 0 <= self.pass_threshold <= 10 or self.max_feedback_rounds < 0:
            raise ValueError("pass_threshold must be in 0..10 and max_feedback_rounds >= 0")


def _validate_memento(obj) -> str:
    if not isinstance(obj, dict) or not isinstance(obj.get("memento"), str) or not obj["memento"].strip():
        raise ValueError('expected {"memento": "<non-empty text>"}')
    return obj["memento"].strip()


def _validate_verdict(obj) -> tuple[int, str]:
    if not isinstance(obj, dict):
        raise ValueError('expected {"score": <0-10>, "feedback": "..."}')
    score, feedback = obj.get("score"), obj.get("feedback", "")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score != int(score) or not 0 <= score <= 10:
        raise ValueError(f"score must be an integer 0-10, got {score!r}")
    if not isinstance(feedback, str):
        raise ValueError("feedback must be a string")
    return int(score), feedback


@dataclass
class LLMCompressor:
    """Compressor + judge loop; `judge` defaults to the compressor's client.

    Per block: write a memento, judge it; while it scores below `pass_threshold` and feedback rounds
    remain, rewrite it with the judge's feedback. The result is the first passing memento, or, when none
    passes, the best-scoring one (ties to the later attempt) with `passed=False`.
    """

    client: ChatClient
    judge: ChatClient | None = None
    config: JudgeLoopConfig = JudgeLoopConfig()

    def describe(self) -> dict:
        judge = self.judge or self.client
        return {"compressor": "llm", "model": self.client.config.model, "judge_model": judge.config.model,
                "pass_threshold": self.config.pass_threshold, "max_feedback_rounds": self.config.max_feedback_rounds}

    def compress_block(self, block: str, problem: str, previous: Sequence[str],
                       where: str = "block") -> CompressionResult:
        judge = self.judge or self.client
        earlier = "\n".join(f"[{i}] {m}" for i, m in enumerate(previous, start=1)) or "(none)"
        system, judge_system = load_prompt("compress_system.txt"), load_prompt("judge_system.txt")
        user = render_prompt(load_prompt("compress_user.txt"), problem=problem, previous=earlier, block=block)
        attempts: list[tuple[int, str]] = []
        for round_ in range(self.config.max_feedback_rounds + 1):
            memento = self.client.chat_json(
                [{"role": "system", "content": system}, {"role": "user", "content": user}],
                _validate_memento, self.config.json_attempts, f"{where}, compression {round_}")
            verdict_prompt = render_prompt(load_prompt("judge_user.txt"), block=block, memento=memento)
            score, feedback = judge.chat_json(
                [{"role": "system", "content": judge_system}, {"role": "user", "content": verdict_prompt}],
                _validate_verdict, self.config.json_attempts, f"{where}, judgement {round_}")
            attempts.append((score, memento))
            scores = tuple(s for s, _ in attempts)
            if score >= self.config.pass_threshold:
                return CompressionResult(memento, feedback_rounds=round_, judge_scores=scores, passed=True)
            user = render_prompt(load_prompt("compress_feedback.txt"), problem=problem, previous=earlier, block=block,
                                 memento=memento, score=str(score), feedback=feedback)
        best = max(range(len(attempts)), key=lambda i: (attempts[i][0], i))
        return CompressionResult(attempts[best][1], feedback_rounds=self.config.max_feedback_rounds,
                                 judge_scores=tuple(s for s, _ in attempts), passed=False)

    def compress_blocks(self, blocks: Sequence[str], problem: str) -> list[CompressionResult]:
        results: list[CompressionResult] = []
        for i, block in enumerate(blocks, start=1):
            results.append(self.compress_block(block, problem, [r.memento for r in results], where=f"block {i}"))
        return results

