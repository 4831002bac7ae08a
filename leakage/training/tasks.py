"""Synthetic Memento tasks whose block contents we control, generated deterministically from a seed.

* `digits` (the paper's toy): n blocks; block i holds `digits_per_block` random digits, '=', and the
  running sum of all digits so far mod 10**sum_digits written as `sum_digits` digits; memento i is that
  running sum; the answer is the final sum. Sums are written ones digit first by default
  (`little_endian_sums`): the ones digit, (previous ones + digit sum) mod 10, is the hard part for a
  0.8M model, and written first it no longer has to be produced after the digits that depend on it.
  For training, `short_block_rate` mixes in blocks with fewer digits, a curriculum that makes the
  modular sum learnable in minutes; evaluation uses the paper's fixed-length blocks (rate 0).
* `recall`: the same blocks; the prompt asks for digit j of block i ("recall block i digit j ?") and the
  answer is that digit. Mementos hold only running sums, so after block i is evicted the digit is
  reachable only through the implicit KV channel (or, weakly, inferred from the sums: see
  `recall_text_only_accuracy`).
* `passcode`: the same blocks; the prompt asks for the passcode ("passcode ?") and the answer is its
  digits. The passcode enters no sum, so memento text carries nothing about it: once its block is
  evicted, only the implicit KV channel can carry it to the answer (text-only accuracy is chance). The
  behavioural twin of the paper's passcode probe; `passcode_block` sets the distance to the answer.
* gist mementos (every task, `gist_tokens = k`): LightThinker-style compression. Each memento is k copies of
  `GIST_WORD`, written by the decoder after the model closes a block (`Example.inserted`: no loss, never
  sampled) instead of the running sum as text; their keys and values, computed while the block is visible,
  are all that carries the block forward. Eviction is Memento's, unchanged: a gist memento changes what the
  trace holds, not when anything leaves the cache, so the schedule and the mask express it as they are.
* passcode injection (every task): block `passcode_block` also holds "passcode p p p p p", tokens that
  enter no sum and no memento. Passcodes come from a partition of the label space, so train and
  validation never share one (`passcode_split`).

Every example names the token positions of its parts (`Example.positions`), declared as data while
rendering (`leakage.memento.trace.Named`), for probing and evaluation.

A task is data: a `TaskSpec` in `TASKS` says how it asks its question (`ask`: prompt and answer digits,
drawn after the blocks), which units score it (`units`, by name from `UNITS`: each block's running sum,
or each answer digit), the accuracies `leakage eval` reports (`evaluations`), chance and the best score
memento text alone allows, the words its prompts use, and whether its answer is the passcode (what the
causal experiments need). Code outside this module asks the spec (`task_spec(name)`) and never compares
task names. Adding a task is one `TaskSpec` here (`register_task` for one defined elsewhere).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from leakage.config import SYNTHETIC_WORDS
from leakage.memento.positions import Site, TracePositions, trace_positions
from leakage.memento.spans import parse_spans
from leakage.memento.trace import MementoTrace, Named

TRAINING_SHORT_BLOCK_RATE = 0.8  # the curriculum `leakage train`/`reproduce` use (docs/results.md)
GIST_WORD = "note"
"""The gist placeholder: a vocabulary word no task writes, so the gist method adds no word (every vocabulary,
and so every checkpoint's initialisation, stays as it was)."""


@dataclass(frozen=True)
class TaskConfig:
    """Shape of a synthetic task.

    task: digits, recall or passcode.
    n_blocks: blocks per trace.
    digits_per_block: random digits in each (full-length) block.
    sum_digits: digits of the running sum (mod 10**sum_digits), the memento.
    passcode_block: block holding the passcode (none: no passcode).
    passcode_blocks: a training mixture: each example draws its passcode block uniformly from these
        (comma-separated; overrides passcode_block), so one model learns every distance to the answer.
    passcode_digits: digits of the passcode.
    little_endian_sums: write sums ones digit first.
    short_block_rate: training curriculum, the share of blocks with 1..digits_per_block-1 digits.
    gist_tokens: 0: each memento is the running sum as text; k > 0: k gist tokens the decoder inserts
        (LightThinker-style; module docstring).
    """

    task: str = "digits"
    n_blocks: int = 10
    digits_per_block: int = 5
    sum_digits: int = 3
    passcode_block: int | None = 1
    passcode_blocks: tuple[int, ...] = ()
    passcode_digits: int = 5
    little_endian_sums: bool = True  # sums written ones digit first (see module docstring)
    short_block_rate: float = 0.0  # training curriculum: share of blocks with 1..digits_per_block-1 digits
    gist_tokens: int = 0

    def __post_init__(self):
        spec = task_spec(self.task)
        for name in ("n_blocks", "digits_per_block", "sum_digits", "passcode_digits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.gist_tokens < 0:
            raise ValueError(f"gist_tokens must be 0 (text mementos) or a positive count, got {self.gist_tokens}")
        if not 0.0 <= self.short_block_rate <= 1.0 or (self.short_block_rate and self.digits_per_block < 2):
            raise ValueError("short_block_rate must be in [0, 1] with digits_per_block >= 2")
        if self.passcode_block is not None and not 0 <= self.passcode_block < self.n_blocks:
            raise ValueError(f"passcode_block {self.passcode_block} outside 0..{self.n_blocks - 1}")
        if spec.answers_passcode and self.passcode_block is None and not self.passcode_blocks:
            raise ValueError(f"the {self.task} task needs a passcode_block")
        spec.check(self)
        bad = [b for b in self.passcode_blocks if not 0 <= b < self.n_blocks]
        if bad:
            raise ValueError(f"passcode_blocks {bad} outside 0..{self.n_blocks - 1}")

    def passcode_block_of(self, seed: int, index: int, split: str) -> int | None:
        """Example `index`'s passcode block: `passcode_block`, or a uniform draw from `passcode_blocks`
        (its own random stream, so the rest of the example does not depend on it)."""
        if not self.passcode_blocks:
            return self.passcode_block
        rng = np.random.default_rng([seed, index, 0 if split == "train" else 1, 1])
        return int(self.passcode_blocks[rng.integers(len(self.passcode_blocks))])


@dataclass
class Example:
    """One rendered example and where its parts sit in `ids`.

    `positions` names every part (`leakage.memento.positions`): the structure of the trace, and the sub-spans
    the task declared when rendering it — "digits/i" and "sum/i" (block i's digits and running sum),
    "passcode" (its digits, when the task writes one), "answer" (the answer digits, EOS excluded).
    """

    ids: list[int]
    prompt_len: int
    trace: MementoTrace
    block_digits: list[list[int]]
    running_sums: list[int]
    answer: list[int]  # answer digits
    positions: TracePositions
    passcode: int | None = None
    passcode_block: int | None = None
    recall: tuple[int, int] | None = None  # (block, digit index) asked for
    gist: bool = False  # the mementos are gist tokens (`TaskConfig.gist_tokens`)

    @property
    def sum_positions(self) -> list[list[int]]:
        """Per block: the running-sum digits inside the block."""
        return [self.positions.select(f"sum/{i}") for i in range(len(self.block_digits))]

    @property
    def memento_positions(self) -> list[list[int]]:
        """Per block: the memento's digits."""
        return [self.positions.select(Site("memento", i)) for i in range(len(self.block_digits))]

    @property
    def answer_positions(self) -> list[int]:
        return self.positions.select("answer_digits")

    @property
    def passcode_digits(self) -> list[int]:
        """The passcode's digits, in order (empty without a passcode)."""
        return _digits(self.passcode, len(self.passcode_positions)) if self.passcode is not None else []

    @property
    def random_inputs(self) -> list[int]:
        """Positions of the tokens the task draws at random and gives (every block's digits, the passcode's):
        no model can predict them, so a recipe may leave them out of the loss."""
        given = [p for i in range(len(self.block_digits)) for p in self.positions.select(f"digits/{i}")]
        return sorted(given + self.passcode_positions)

    @property
    def passcode_positions(self) -> list[int]:
        return self.positions.select("passcode") if self.passcode is not None else []

    @property
    def inserted(self) -> list[int]:
        """Positions the compression method writes, not the model: with gist mementos, every block's
        `<|summary_start|>`, gist tokens and `<|summary_end|>` (no loss, never sampled); else none."""
        if not self.gist:
            return []
        parts = ("summary_start", "memento", "summary_end")
        return sorted(p for i in range(len(self.block_digits)) for part in parts
                      for p in self.positions.select(Site(part, i)))


def _split_of(passcode: int, val_fraction: float) -> str:
    bucket = int.from_bytes(hashlib.sha256(str(passcode).encode()).digest()[:4], "big") / 2**32
    return "val" if bucket < val_fraction else "train"


def passcode_split(passcode: int, val_fraction: float = 0.1) -> str:
    """'train' or 'val': a fixed hash partition of the passcode space (label-unique splits)."""
    return _split_of(passcode, val_fraction)


def _digits(value: int, width: int) -> list[int]:
    return [int(c) for c in str(value).zfill(width)]


def _words(digits: list[int]) -> str:
    return " ".join(str(d) for d in digits)


def make_example(config: TaskConfig, tokenizer, seed: int, index: int, split: str = "train",
                 val_fraction: float = 0.1) -> Example:
    """The `index`-th example of a split, a pure function of (config, seed, index, split)."""
    rng = np.random.default_rng([seed, index, 0 if split == "train" else 1])
    modulus = 10 ** config.sum_digits
    blocks, block_digits, sums, running = [], [], [], 0
    passcode, passcode_block = None, config.passcode_block_of(seed, index, split)
    if passcode_block is not None:
        while passcode is None or passcode_split(passcode, val_fraction) != split:
            passcode = int(rng.integers(0, 10 ** config.passcode_digits))
    def written(value: int) -> list[int]:
        digits = _digits(value, config.sum_digits)
        return digits[::-1] if config.little_endian_sums else digits

    for i in range(config.n_blocks):
        count = config.digits_per_block
        if config.short_block_rate and rng.random() < config.short_block_rate:
            count = int(rng.integers(1, config.digits_per_block))
        digits = rng.integers(0, 10, count).tolist()
        running = (running + sum(digits)) % modulus
        pieces = [(f"digits/{i}", _words(digits)), (None, "="), (f"sum/{i}", _words(written(running)))]
        if i == passcode_block:
            pieces += [(None, "passcode"), ("passcode", _words(_digits(passcode, config.passcode_digits)))]
        memento = " ".join([GIST_WORD] * config.gist_tokens) if config.gist_tokens else _words(written(running))
        blocks.append((Named(*pieces), memento))
        block_digits.append(digits)
        sums.append(running)
    passcode_digits = _digits(passcode, config.passcode_digits) if passcode is not None else []
    question = task_spec(config.task).ask(config, Contents(block_digits, [written(v) for v in sums], passcode_digits),
                                          rng)
    trace = MementoTrace(prompt=question.prompt, blocks=blocks,
                         answer=Named(("answer_digits", _words(question.answer))))
    rendered = trace.render(tokenizer, eos=True)
    parts = dict(rendered.parts)
    for name, (part, index) in question.pointers.items():
        parts[name] = [rendered.parts[part][index]]
    spans = parse_spans(rendered.ids, tokenizer)
    return Example(ids=rendered.ids, prompt_len=spans.prompt_len, trace=trace, block_digits=block_digits,
                   running_sums=sums, answer=question.answer, positions=trace_positions(spans, parts),
                   passcode=passcode, passcode_block=passcode_block, recall=question.recall,
                   gist=bool(config.gist_tokens))


def recall_text_only_accuracy(digits_per_block: int = 5) -> float:
    """Best possible recall accuracy from memento *text* alone (Bayes-optimal guess of one digit given
    the block's digit sum, which consecutive running sums reveal when sums do not wrap)."""
    # distribution of the sum of the other digits
    others = np.ones(1)  # counts of each sum of the other digits, length 9 (digits_per_block - 1) + 1
    for _ in range(digits_per_block - 1):
        others = np.convolve(others, np.ones(10))
    joint = np.zeros((10, 9 * digits_per_block + 1))  # P(digit = v, total = S), unnormalised
    for v in range(10):
        joint[v, v:v + len(others)] = others
    return float(joint.max(0).sum() / joint.sum())


# -- tasks as data ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Contents:
    """What a question can ask about, drawn before it: each block's digits, each running sum as written in
    its block and memento, and the passcode's digits (empty without a passcode)."""

    block_digits: list[list[int]]
    written_sums: list[list[int]]
    passcode: list[int]


@dataclass(frozen=True)
class Question:
    """A task's question about one trace: the prompt, the answer's digits, extra named positions
    (`pointers`: name -> (task part, index in it), e.g. the digit a recall question asks for), and the
    recalled (block, digit index) for `recall`."""

    prompt: str
    answer: list[int]
    pointers: dict[str, tuple[str, int]] = field(default_factory=dict)
    recall: tuple[int, int] | None = None


@dataclass(frozen=True)
class Unit:
    """A scored unit: `positions(example)` lists each unit's token positions; a unit is right when every
    one of its tokens is. `noun` names one unit in tables."""

    name: str
    noun: str
    positions: Callable[[Example], list[list[int]]]


UNITS: dict[str, Unit] = {unit.name: unit for unit in (
    Unit("sums", "block", lambda e: e.sum_positions),  # each block's running sum, all its digits
    Unit("answer_digits", "answer digit", lambda e: [[p] for p in e.answer_positions]),
)}


def unit(name: str) -> Unit:
    """A scored unit by name; the error lists the units that exist."""
    try:
        return UNITS[name]
    except KeyError:
        raise ValueError(f"unknown scored unit {name!r}; choose one of {sorted(UNITS)}") from None


def _no_check(config: TaskConfig) -> None:
    return None


@dataclass(frozen=True)
class TaskSpec:
    """A task as data (module docstring).

    name: the task's name (`TaskConfig.task`).
    ask: (config, contents, rng) -> Question: draws (with `rng`, after the blocks) and renders the question.
    words: the words its prompts use (each must be in the synthetic vocabulary).
    units: the units that score it (`UNITS` names), the headline first: task accuracy during training
        and the restart ablation's default.
    evaluations: (name, unit, method) of each accuracy `leakage eval` reports, method `teacher_forced`
        or `free_running` (`leakage.training.evaluate`).
    chance: a uniform guess's accuracy per headline unit (None: not a guessing task).
    text_only: (config) -> the best headline accuracy memento text alone allows (None: not defined).
    answers_passcode: the answer is the passcode (the twins of the causal experiments need this).
    check: extra validation of a `TaskConfig` of this task (raises ValueError).
    """

    name: str
    ask: Callable[[TaskConfig, Contents, np.random.Generator], Question]
    words: tuple[str, ...]
    units: tuple[str, ...]
    evaluations: tuple[tuple[str, str, str], ...]
    chance: float | None = None
    text_only: Callable[[TaskConfig], float] | None = None
    answers_passcode: bool = False
    check: Callable[[TaskConfig], None] = _no_check


def _ask_sum(config: TaskConfig, contents: Contents, rng: np.random.Generator) -> Question:
    return Question("sum ?", contents.written_sums[-1])


def _ask_passcode(config: TaskConfig, contents: Contents, rng: np.random.Generator) -> Question:
    return Question("passcode ?", contents.passcode)


def _ask_recall(config: TaskConfig, contents: Contents, rng: np.random.Generator) -> Question:
    block = int(rng.integers(0, config.n_blocks))
    digit = int(rng.integers(0, len(contents.block_digits[block])))
    return Question(f"recall block {block} digit {digit} ?", [contents.block_digits[block][digit]],
                    pointers={"recall_target": (f"digits/{block}", digit)}, recall=(block, digit))


def _check_recall(config: TaskConfig) -> None:
    if config.n_blocks > 10:
        raise ValueError(f"recall names blocks by one digit: n_blocks must be 1..10, got {config.n_blocks}")


TASKS: dict[str, TaskSpec] = {}
"""Every task by name (`register_task` adds one)."""


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task; its words must be in the synthetic vocabulary and its units and methods must exist."""
    missing = sorted(set(spec.words) - set(SYNTHETIC_WORDS))
    if missing:
        raise ValueError(f"task {spec.name!r} uses words outside the synthetic vocabulary: {missing}; append them to "
                         "leakage.config.SYNTHETIC_WORDS (at the end: existing checkpoints keep their ids)")
    for name in spec.units + tuple(u for _, u, _ in spec.evaluations):
        unit(name)
    bad = [m for _, _, m in spec.evaluations if m not in ("teacher_forced", "free_running")]
    if not spec.units or bad:
        raise ValueError(f"task {spec.name!r}: needs at least one unit; unknown evaluation methods {bad}")
    TASKS[spec.name] = spec
    return spec


def task_spec(name: str) -> TaskSpec:
    """The `TaskSpec` of a task name; the error lists the tasks that exist."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None


register_task(TaskSpec("digits", _ask_sum, words=("sum", "?"), units=("sums", "answer_digits"),
                       evaluations=(("free_running", "sums", "free_running"),
                                    ("teacher_forced", "sums", "teacher_forced"))))
register_task(TaskSpec("recall", _ask_recall, words=("recall", "block", "digit", "?"), units=("answer_digits", "sums"),
                       evaluations=(("answer", "answer_digits", "teacher_forced"),), chance=0.1,
                       text_only=lambda config: recall_text_only_accuracy(config.digits_per_block),
                       check=_check_recall))
register_task(TaskSpec("passcode", _ask_passcode, words=("passcode", "?"), units=("answer_digits", "sums"),
                       evaluations=(("answer", "answer_digits", "teacher_forced"),), chance=0.1,
                       text_only=lambda config: 0.1, answers_passcode=True))
