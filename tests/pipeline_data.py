"""Small synthetic chain-of-thought traces for the data-pipeline tests (so they mean something without ../shared)."""

import json
import random

PARAGRAPHS = (
    "Let me compute the sum of {a} and {b}:\n\n{a} + {b} = {c}\n\nSo the sum is {c}.",
    "Wait, that seems off. Let me check the previous step again, because {a} plus {b} should be {c}.",
    "Alternatively, we could write the equation as \\( x - {a} = {b} \\) and solve for x. Then x = {c}.",
    "Hmm. The value {c} looks right because {a} is smaller than {c} (e.g. {a} < {c}. Both are positive.).",
    "Here is a quick check in code:\n\n```python\nx = {a} + {b}. \nprint(x)\n```\n\nIt prints {c}.",
    "First, note that the total must be an integer. The numbers {a} and {b} are integers, so {c} is too.",
    "Therefore the running total is {c}. Thus the next value to add is {b}.",
    "Now consider the product. We have\n\n$$\n{a} \\times {b} = {p}\n$$\n\nwhich is larger than the sum {c}.",
    "Let me double-check the product by repeated addition. Adding {a} to itself {b} times gives {p}. Okay.",
)


def synthetic_cot(seed: int, n_paragraphs: int = 24) -> str:
    """A deterministic reasoning text with paragraphs, pivots, math, code and abbreviations."""
    rng = random.Random(seed)
    parts = []
    for _ in range(n_paragraphs):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        parts.append(rng.choice(PARAGRAPHS).format(a=a, b=b, c=a + b, p=a * b))
    return "\n\n".join(parts)


def synthetic_record(task_id: str, seed: int, n_paragraphs: int = 24, answer: str = "The answer is 42.") -> dict:
    """An OpenThoughts-style record: {"task_id", "problem", "cot": "<think>...</think>answer", "domain"}."""
    return {"task_id": task_id, "problem": f"Add the numbers of puzzle {seed}.",
            "cot": f"<think>\n{synthetic_cot(seed, n_paragraphs)}\n</think>\n\n{answer}", "domain": "math"}


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
