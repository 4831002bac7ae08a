"""The eviction schedule on hand-written token streams, and the KV simulator against the engine replay."""

from hypothesis import given, settings
from hypothesis import strategies as st

from leakage.config import EvictionConfig
from leakage.memento.kv import simulate_kv
from leakage.memento.mask import memento_mask
from leakage.memento.schedule import Eviction, Recompute, eviction_schedule
from leakage.memento.spans import parse_spans
from tests.engine_replica import replay
from tests.strategies import MARKERS, memento_streams

M = MARKERS
#        0  1              2               3  4  5             6                  7  8
TWO = [7, M.think_start, M.block_start, 1, 2, M.block_end, M.summary_start, 3, M.summary_end,
       M.block_start, 4, M.block_end, M.summary_start, 5, M.summary_end, M.think_end, 6]
#      9              10 11           12                 13 14            15           16


def schedule(ids, **spec):
    return eviction_schedule(parse_spans(ids, MARKERS), EvictionConfig(**spec))


def test_summary_end_row_never_sees_the_block_it_closes():
    s = schedule(TWO)
    assert s.evictions == (Eviction(block=0, start=3, end=5, trigger=8, before=8),
                           Eviction(block=1, start=10, end=11, trigger=14, before=14))
    assert s.recomputes == ()
    mask = memento_mask(TWO, MARKERS)
    assert not mask[8, 3:5].any() and not mask[14, 10]  # the <|summary_end|> rows
    assert mask[7, 3:5].all() and mask[13, 10]  # the memento tokens before them saw the block
    legacy = schedule(TWO, summary_end_sees_block=True)  # the earlier timing, one query later
    assert [e.before for e in legacy.evictions] == [9, 15]


def test_restart_evicts_delimiters_inclusive_and_rewinds_to_summary_start():
    for delimiters in (False, True):
        s = schedule(TWO, restart=True, mask_delimiters=delimiters)
        assert [(e.start, e.end, e.before) for e in s.evictions] == [(2, 6, 8), (9, 12, 14)]
        assert s.recomputes == (Recompute(block=0, start=6, at=8), Recompute(block=1, start=12, at=14))
    mask = memento_mask(TWO, MARKERS, restart=True)
    assert not mask[6:9, 2:6].any() and mask[6:9, :2].all()  # the memento rows recomputed without the block
    assert mask[5, 2:5].all()  # the evicted <|block_end|> had seen it, but it is gone
    legacy = schedule(TWO, restart=True, summary_end_sees_block=True)
    assert legacy.recomputes[0] == Recompute(block=0, start=5, at=8, hidden=(3, 5))  # keeps and re-encodes <|block_end|>


def test_keep_last_n_and_keep_last_block_for_answer():
    s = schedule(TWO, keep_last_n_blocks=1)
    assert s.evictions == (Eviction(block=0, start=3, end=5, trigger=14, before=14),)
    deferred = schedule(TWO, keep_last_block_for_answer=True)
    assert deferred.evictions == (Eviction(block=0, start=3, end=5, trigger=9, before=9),)  # the next block_start
    restart = schedule(TWO, keep_last_block_for_answer=True, restart=True)
    assert restart.recomputes == (Recompute(block=0, start=6, at=9),)  # from block 0's summary through block_start
    # the engine implements the deferral for keep_last_n_blocks=0 only
    assert schedule(TWO, keep_last_n_blocks=1, keep_last_block_for_answer=True) == s


def test_unfinished_traces_and_vanilla_have_no_events():
    open_summary = TWO[:8]
    assert schedule(open_summary).evictions == ()
    assert schedule(TWO, keep_last_n_blocks=-1).evictions == ()


@settings(max_examples=150, deadline=None)
@given(ids=memento_streams(), keep=st.sampled_from([0, 1, 2]), delim=st.booleans(), restart=st.booleans(),
       for_answer=st.booleans())
def test_simulated_kv_equals_the_engine_replay(ids, keep, delim, restart, for_answer):
    config = EvictionConfig(keep_last_n_blocks=keep, mask_delimiters=delim, restart=restart,
                            keep_last_block_for_answer=for_answer)
    _, counts = replay(ids, MARKERS, keep, delim, restart, for_answer)
    assert simulate_kv(ids, MARKERS, config).cached_tokens == counts
