"""A run's phase marks add up to its wall time, by kind of work."""

import pytest

from leakage.analysis.record import seconds_by_kind


def test_phases_are_added_up_by_the_first_word_of_their_messages():
    """Each phase lasts until the next mark (the last until the end of the run); what no kind names counts as the
    rest, and the time before the first mark as setup: the kinds add up to the wall time (a sum that dropped the
    last phase, or measured a phase from the previous mark, would not)."""
    phases = [{"seconds": 2.0, "phase": "traces ready"}, {"seconds": 2.0, "phase": "capturing main"},
              {"seconds": 7.0, "phase": "probing main"}, {"seconds": 8.5, "phase": "  direct d=0: 0.9"},
              {"seconds": 10.0, "phase": "scoring checkpoint 3"}, {"seconds": 10.5, "phase": "capturing checkpoint 3"},
              {"seconds": 12.0, "phase": "probing checkpoint 3"}]
    totals = seconds_by_kind(phases, 15.0, ("capturing", "scoring"), rest="fitting")
    assert totals == {"setup": 2.0, "capturing": 6.5, "scoring": 0.5, "fitting": 6.0}
    assert sum(totals.values()) == pytest.approx(15.0)


def test_a_run_without_marks_is_all_setup():
    assert seconds_by_kind([], 3.0, ("capturing",), rest="fitting") == {"setup": 3.0, "capturing": 0.0, "fitting": 0.0}
