"""The memory budget of batched forwards: the caller's number, else $LEAKAGE_MEMORY_MB, else the default; a bad
variable is refused by name, and the rows per batch follow the budget."""

import pytest

from leakage.engine.memory import MEMORY_MB, MEMORY_VARIABLE, forward_memory_bytes, memory_budget, rows_per_batch
from leakage.engine.model import build_model


def test_the_budget_is_the_callers_else_the_variables_else_the_default(monkeypatch):
    monkeypatch.delenv(MEMORY_VARIABLE, raising=False)
    assert memory_budget() == MEMORY_MB and memory_budget(100) == 100
    monkeypatch.setenv(MEMORY_VARIABLE, "300")
    assert memory_budget() == 300 and memory_budget(100) == 100
    for bad in ("lots", "0", "1.5"):
        monkeypatch.setenv(MEMORY_VARIABLE, bad)
        with pytest.raises(ValueError, match=MEMORY_VARIABLE):
            memory_budget()


def test_rows_per_batch_follow_the_budget_from_the_variable(monkeypatch):
    model, _ = build_model("tiny", seed=0)
    per_row = forward_memory_bytes(model, 500)
    assert forward_memory_bytes(model, 1000) > 3 * per_row  # attention scores grow with the square of the length
    monkeypatch.setenv(MEMORY_VARIABLE, str(-(-3 * per_row // 2 ** 20)))  # whole MiB holding three rows at least
    rows = rows_per_batch(model, 500, most=1000)
    assert 3 <= rows and rows * per_row <= int(-(-3 * per_row // 2 ** 20)) * 2 ** 20 < (rows + 1) * per_row
    assert rows_per_batch(model, 500, most=2) == 2  # never more than asked
    monkeypatch.setenv(MEMORY_VARIABLE, "1")
    with pytest.raises(ValueError, match=f"sequence of 100000 tokens.*{MEMORY_VARIABLE}"):
        rows_per_batch(model, 100_000)
