"""Structure-aware sentence splitting of chain-of-thought text, and the naive splitter it is measured against.

A split is a list of sentence start offsets that tile the text exactly: sentence i is
``text[starts[i]:starts[i + 1]]``, every sentence after the first starts at a non-whitespace character,
and the whitespace between two sentences ends the earlier one. So ``"".join(split.sentences) == text``.

Candidate boundaries (both splitters) are the start of every line and the first non-whitespace
character after sentence-final punctuation (``.``, ``!``, ``?``, optionally followed by closing quotes
or brackets) and whitespace. The naive splitter keeps every candidate. The structure-aware splitter
removes candidates for these reasons, applied in this order (each removed candidate counts once, under
the first reason that removes it):

    protected     inside a fenced (``` or ~~~) or indented code block, display math ($$...$$, \\[...\\],
                  \\begin{env}...\\end{env}), inline math ($...$, \\(...\\)) or parentheses/brackets
    abbreviation  after a common abbreviation ("e.g.", "Fig.", ...), a one-letter initial ("J."), or a
                  list enumerator at the start of a line ("1.", "a)")
    colon         after a sentence ending in ':' (it introduces what follows)
    continuation  before a sentence starting with a continuation word (Therefore, Thus, So, Hence)
    math          between two consecutive math lines (see `is_math_line`)
    fragment      a sentence under `min_fragment_tokens` tokens is merged into the next sentence (the
                  last sentence into the previous one): short fragments in reasoning are mostly
                  interjections ("Wait.", "Hmm.") that open the next thought, so a pivot word stays at
                  the start of the sentence it introduces
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

TokenCounter = Callable[[str], int]

REMOVAL_REASONS = ("protected", "abbreviation", "colon", "continuation", "math", "fragment")

ABBREVIATIONS = (
    "e.g.", "i.e.", "etc.", "vs.", "cf.", "viz.", "approx.", "resp.", "al.", "ca.", "fig.", "figs.", "eq.",
    "eqs.", "sec.", "ch.", "no.", "nos.", "vol.", "p.", "pp.", "dr.", "mr.", "mrs.", "ms.", "prof.", "st.",
    "jr.", "sr.", "inc.", "ltd.", "co.", "corp.", "dept.", "univ.", "min.", "max.", "deg.", "def.", "thm.",
    "lem.", "prop.", "cor.", "ex.", "approx.", "w.r.t.", "s.t.", "a.k.a.", "u.s.",
)


@dataclass(frozen=True)
class SplitConfig:
    """Rules of the structure-aware splitter (module docstring). The defaults are the paper's rules."""

    min_fragment_tokens: int = 5
    continuation_words: tuple[str, ...] = ("Therefore", "Thus", "So", "Hence")
    abbreviations: tuple[str, ...] = ABBREVIATIONS
    merge_colon: bool = True
    merge_continuation: bool = True
    merge_math: bool = True

    def __post_init__(self):
        if self.min_fragment_tokens < 0:
            raise ValueError(f"min_fragment_tokens must be >= 0, got {self.min_fragment_tokens}")


@dataclass(frozen=True)
class SentenceSplit:
    """Sentences of `text` as start offsets (see module docstring); `removed` counts removed candidates."""

    text: str
    starts: tuple[int, ...]
    n_candidates: int
    removed: dict[str, int] = field(default_factory=dict)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Half-open character spans [start, end), tiling the text."""
        ends = (*self.starts[1:], len(self.text))
        return list(zip(self.starts, ends))

    @property
    def sentences(self) -> list[str]:
        """Exact sentence strings, trailing whitespace included (they concatenate back to the text)."""
        return [self.text[s:e] for s, e in self.spans]

    @property
    def n_boundaries(self) -> int:
        return max(len(self.starts) - 1, 0)

    def __len__(self) -> int:
        return len(self.starts)


@dataclass(frozen=True)
class BoundaryReport:
    """How many candidate boundaries the structure-aware splitter keeps vs the naive splitter."""

    naive_boundaries: int
    structured_boundaries: int
    removed: dict[str, int]

    @property
    def reduction_ratio(self) -> float | None:
        """naive / structured boundaries (the paper reports about 2x); None when structured is 0."""
        if self.structured_boundaries == 0:
            return None
        return self.naive_boundaries / self.structured_boundaries

    def to_dict(self) -> dict:
        return dict(naive_boundaries=self.naive_boundaries, structured_boundaries=self.structured_boundaries,
                    reduction_ratio=self.reduction_ratio, removed=dict(self.removed))


def default_token_count(text: str) -> int:
    """Words and punctuation marks: the token counter used when no tokenizer is given."""
    return len(re.findall(r"\w+|[^\w\s]", text))


# ---------------------------------------------------------------------------------------------
# candidates

_TERMINATOR_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*$")


@dataclass(frozen=True)
class _Candidate:
    position: int  # start of the would-be next sentence
    line_break: bool  # the whitespace before it holds a newline
    gap_start: int  # where the whitespace before it starts


def _candidates(text: str) -> list[_Candidate]:
    found = []
    for m in re.finditer(r"\s+", text):
        if m.start() == 0 or m.end() == len(text):
            continue
        line_break = "\n" in m.group()
        if line_break or _TERMINATOR_END.search(text[max(0, m.start() - 8):m.start()]):
            found.append(_Candidate(m.end(), line_break, m.start()))
    return found


# ---------------------------------------------------------------------------------------------
# protected regions

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*$")
_DISPLAY_MATH = re.compile(r"\$\$(?:(?!\$\$).)+?\$\$|\\\[(?:(?!\\\[).)*?\\\]|\\begin\{([A-Za-z*]+)\}.*?\\end\{\1\}",
                           re.S)
_INLINE_MATH = re.compile(r"\\\((?:(?!\\\(|\n[ \t]*\n).)*?\\\)"
                          r"|(?<![\\$])\$(?![\s$])(?:\\.|[^$\\\n])*?(?<![\s\\])\$(?!\d)", re.S)
_LIST_MARKER = re.compile(r"(?:[-*+]|\d{1,3}[.)]|[a-zA-Z][.)])\s")
_OPEN, _CLOSE = "([", ")]"


def _blank(work: str, regions: list[tuple[int, int]]) -> str:
    """Replace each [start, end) by NULs, newlines kept, so later passes neither see nor reuse them."""
    chars = list(work)
    for start, end in regions:
        for pos in range(start, end):
            if chars[pos] != "\n":
                chars[pos] = "\0"
    return "".join(chars)


def _line_spans(text: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for line in text.split("\n"):
        spans.append((pos, pos + len(line)))
        pos += len(line) + 1
    return spans


def _fenced_code(work: str) -> list[tuple[int, int]]:
    """Fenced code blocks (``` or ~~~, closed by a fence of the same character at least as long).

    An unclosed fence is left as plain text, so one stray ``` cannot swallow the rest of a trace.
    """
    regions, lines, i = [], _line_spans(work), 0
    while i < len(lines):
        s, e = lines[i]
        m = _FENCE_OPEN.match(work[s:e])
        if m:
            fence = m.group(1)
            closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
            for j in range(i + 1, len(lines)):
                if closing.match(work[lines[j][0]:lines[j][1]]):
                    indent = len(work[s:e]) - len(work[s:e].lstrip())
                    regions.append((s + indent, lines[j][1]))
                    i = j
                    break
        i += 1
    return regions


def _indented_code(work: str) -> list[tuple[int, int]]:
    """Runs of lines indented by 4+ spaces or a tab, after a blank line, not starting with a list marker.

    A region starts at its first non-blank character, so the boundary before the block stays possible.
    """
    regions, lines = [], _line_spans(work)
    i = 0
    while i < len(lines):
        s, e = lines[i]
        line = work[s:e]
        previous_blank = i == 0 or not work[lines[i - 1][0]:lines[i - 1][1]].strip()
        if previous_blank and re.match(r"( {4,}|\t)\S", line) and not _LIST_MARKER.match(line.lstrip()):
            last = i
            j = i + 1
            while j < len(lines):
                text_j = work[lines[j][0]:lines[j][1]]
                if re.match(r"( {4,}|\t)", text_j):
                    last = j
                elif text_j.strip():
                    break
                j += 1
            regions.append((s + len(line) - len(line.lstrip()), lines[last][1]))  # from the first code character
            i = last + 1
            continue
        i += 1
    return regions


def _bracketed(work: str) -> list[tuple[int, int]]:
    """Matched ( ) and [ ] pairs within one paragraph; unmatched brackets protect nothing."""
    regions, stack = [], []
    paragraph_breaks = {m.start() for m in re.finditer(r"\n[ \t]*\n", work)}
    for pos, ch in enumerate(work):
        if pos in paragraph_breaks:
            stack.clear()
        if ch in _OPEN:
            stack.append((ch, pos))
        elif ch in _CLOSE:
            want = _OPEN[_CLOSE.index(ch)]
            for depth in range(len(stack) - 1, -1, -1):
                if stack[depth][0] == want:
                    regions.append((stack[depth][1], pos + 1))
                    del stack[depth:]
                    break
    return regions


def protected_regions(text: str) -> list[tuple[int, int, str]]:
    """Half-open regions no boundary may fall strictly inside: (start, end, kind), in detection order.

    Kinds: code (fenced), math_display, math_inline, code_indented, brackets. Each pass runs on the text
    with earlier regions blanked out, so a '$' inside code never opens inline math.
    """
    work, regions = text, []
    passes = [("code", _fenced_code), ("math_display", lambda w: [m.span() for m in _DISPLAY_MATH.finditer(w)]),
              ("math_inline", lambda w: [m.span() for m in _INLINE_MATH.finditer(w)]),
              ("code_indented", _indented_code), ("brackets", _bracketed)]
    for kind, find in passes:
        found = find(work)
        regions += [(start, end, kind) for start, end in found]
        work = _blank(work, found)
    return regions


# ---------------------------------------------------------------------------------------------
# math lines

_MATH_WORDS = frozenset(
    "sqrt frac dfrac tfrac sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp lim sum "
    "prod int cdot times div pm mp le ge leq geq neq ne approx equiv pi theta alpha beta gamma delta epsilon "
    "lambda mu sigma phi omega left right mod pmod max min gcd lcm det boxed text mathrm mathbf quad qquad "
    "implies iff rightarrow leftarrow to infty partial nabla cdots ldots dots lhs rhs".split())
_MATH_OPERATOR = re.compile(r"[=<>\u2264\u2265\u2260\u2248\u221a\u2211\u222b^\u00b1\u00d7\u00f7\u21d2\u2192]"
                            r"|\d\s*[-+*/]\s*[\d(a-zA-Z]|[)a-zA-Z]\s*[+*/]\s*[\d(]")


def is_math_line(sentence: str) -> bool:
    """A sentence that is mostly mathematics.

    True for display math alone, or when, after removing inline/display math and a list marker, at most
    two prose words remain (words of 2+ letters that are not math names like sqrt, sin, lhs) and the
    sentence had math markup or contains an operator (=, <, sqrt sign, ^, 3 + 4, x * (...), ...).
    """
    t = sentence.strip()
    if not t:
        return False
    rest, n_display = _DISPLAY_MATH.subn(" ", t)
    rest, n_inline = _INLINE_MATH.subn(" ", rest)
    rest = rest.strip()
    if _LIST_MARKER.match(rest + " "):
        rest = _LIST_MARKER.sub("", rest + " ", count=1)
    words = [w for w in re.findall(r"[^\W\d_]{2,}", rest) if w.lower() not in _MATH_WORDS]
    if len(words) > 2:
        return False
    return n_display + n_inline > 0 or bool(_MATH_OPERATOR.search(rest))


# ---------------------------------------------------------------------------------------------
# splitters


def naive_split(text: str) -> SentenceSplit:
    """Split at every candidate boundary: each line break and each '.', '!' or '?' followed by whitespace."""
    cands = _candidates(text)
    starts = (0, *(c.position for c in cands)) if text else ()
    return SentenceSplit(text=text, starts=starts, n_candidates=len(cands), removed={})


def _is_abbreviation(text: str, cand: _Candidate, abbreviations: frozenset[str]) -> bool:
    line_start = text.rfind("\n", 0, cand.gap_start) + 1
    before = text[line_start:cand.gap_start]
    m = re.search(r"(\S+)$", before)
    if not m or not m.group(1).endswith("."):
        return False
    word = m.group(1).lstrip("([{\"'*_")
    if word.lower() in abbreviations or re.fullmatch(r"[A-Z]\.", word):
        return True
    at_line_start = not before[:m.start()].strip()
    return at_line_start and re.fullmatch(r"(\d{1,3}|[a-zA-Z]|[ivxlcIVXLC]{1,5})[.)]", word) is not None


def _starts_with_word(sentence: str, words: frozenset[str]) -> bool:
    m = re.match(r"[*_\s]*([^\W\d_]+)\b", sentence)
    return bool(m) and m.group(1).lower() in words


def split_sentences(text: str, config: SplitConfig = SplitConfig(),
                    count_tokens: TokenCounter | None = None) -> SentenceSplit:
    """Structure-aware split (module docstring). `count_tokens` sizes fragments (default: words + punctuation)."""
    count = count_tokens or default_token_count
    cands = _candidates(text)
    removed = {reason: 0 for reason in REMOVAL_REASONS}
    if not text:
        return SentenceSplit(text=text, starts=(), n_candidates=0, removed=removed)

    protected = bytearray(len(text) + 1)
    for start, end, _ in protected_regions(text):
        protected[start + 1:end] = b"\1" * max(end - start - 1, 0)
    abbreviations = frozenset(a.lower() for a in config.abbreviations)
    kept = []
    for cand in cands:
        if protected[cand.position]:
            removed["protected"] += 1
        elif not cand.line_break and _is_abbreviation(text, cand, abbreviations):
            removed["abbreviation"] += 1
        else:
            kept.append(cand.position)

    # Boundary rules on the atoms between kept candidates: boundary i lies between atoms i and i + 1.
    starts = [0, *kept]
    atoms = [text[s:e] for s, e in zip(starts, [*starts[1:], len(text)])]
    continuation = frozenset(w.lower() for w in config.continuation_words)
    math = [is_math_line(a) for a in atoms] if config.merge_math else []
    keep_boundary = []
    for i in range(len(atoms) - 1):
        if config.merge_colon and atoms[i].rstrip().endswith(":"):
            removed["colon"] += 1
        elif config.merge_continuation and _starts_with_word(atoms[i + 1], continuation):
            removed["continuation"] += 1
        elif config.merge_math and math[i] and math[i + 1]:
            removed["math"] += 1
        else:
            keep_boundary.append(i + 1)
    groups = [0, *keep_boundary]  # indices of atoms that start a sentence
    group_starts = [starts[g] for g in groups]

    # Fragments: merge a short sentence into the next one (the last one into the previous one).
    bounds = [*group_starts, len(text)]
    sentence_starts: list[int] = []
    pending = None  # start of a fragment waiting to be merged into the next sentence
    for i in range(len(group_starts)):
        start = group_starts[i] if pending is None else pending
        if pending is not None:
            removed["fragment"] += 1
        pending = None
        if count(text[start:bounds[i + 1]]) < config.min_fragment_tokens and i + 1 < len(group_starts):
            pending = start
        else:
            sentence_starts.append(start)
    if len(sentence_starts) > 1 and count(text[sentence_starts[-1]:]) < config.min_fragment_tokens:
        sentence_starts.pop()
        removed["fragment"] += 1
    return SentenceSplit(text=text, starts=tuple(sentence_starts), n_candidates=len(cands), removed=removed)


def boundary_reduction(text: str, config: SplitConfig = SplitConfig(),
                       count_tokens: TokenCounter | None = None) -> BoundaryReport:
    """Candidate boundaries of the naive splitter vs the structure-aware one, with removal counts by reason."""
    split = split_sentences(text, config, count_tokens)
    return BoundaryReport(naive_boundaries=naive_split(text).n_boundaries,
                          structured_boundaries=split.n_boundaries, removed=split.removed)
