"""memento_mask against independent references: a token-by-token replay of the official engine's tracker
(the default timing) and a brute-force loop written from the earlier timing (`summary_end_sees_block`)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from leakage.config import EvictionConfig
from leakage.memento.mask import additive_mask, mask_from_spans, memento_mask
from leakage.memento.spans import parse_spans
from tests.engine_replica import replay
from tests.strategies import MARKERS, memento_streams

SPECS = [(keep, delim, restart) for keep in (-1, 0, 1, 2) for delim in (False, True) for restart in (False, True)
         if not (restart and keep == -1)]  # restart needs eviction


def engine_mask(ids, keep, mask_delimiters, restart, for_answer=False):
    """The mask read off the engine replica: row q holds what q's final keys/values attended."""
    T = len(ids)
    out = torch.zeros(T, T, dtype=torch.bool)
    if keep == -1:
        return torch.ones(T, T, dtype=torch.bool).tril()
    attended, _ = replay(ids, MARKERS, keep, mask_delimiters, restart, for_answer)
    for q, keys in enumerate(attended):
        out[q, keys] = True
    return out


def legacy_reference_mask(ids, keep, mask_delimiters, restart, for_answer=False):
    """`summary_end_sees_block=True`, written from its stated semantics: loop over (query, key) pairs,
    scanning raw ids; shares no code with leakage.memento.spans / leakage.memento.mask."""
    m = MARKERS
    T = len(ids)
    # scan the response for each block's delimiter positions
    blocks = []  # dicts with bs, be, ss, se
    in_prompt = True
    for p, t in enumerate(ids):
        if in_prompt:
            in_prompt = t != m.think_start
            continue
        if t == m.block_start:
            blocks.append({"bs": p, "be": None, "ss": None, "se": None})
        elif t == m.block_end:
            blocks[-1]["be"] = p
        elif t == m.summary_start:
            blocks[-1]["ss"] = p
        elif t == m.summary_end:
            blocks[-1]["se"] = p

    def masked_block_of(k):
        for i, b in enumerate(blocks):
            if b["be"] is None:
                continue
            inside = b["bs"] <= k <= b["be"] if mask_delimiters else b["bs"] < k < b["be"]
            if inside:
                return i
        return None

    out = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        completed = [i for i, b in enumerate(blocks) if b["se"] is not None and b["se"] < q]
        if for_answer:  # evictions wait for the next <|block_start|>, which itself no longer sees the block
            completed = [i for i in completed if any(b["bs"] <= q for b in blocks[i + 1:])]
        for k in range(q + 1):
            allowed = True
            i = masked_block_of(k)
            if keep != -1 and i is not None:
                visible_recent = completed[len(completed) - keep:] if keep > 0 else []
                if i in completed and i not in visible_recent:
                    allowed = False
                b = blocks[i]
                end_of_masked = b["be"] + 1 if mask_delimiters else b["be"]
                if restart and b["se"] is not None and end_of_masked <= q <= b["se"]:
                    allowed = False
            out[q, k] = allowed
    return out


@settings(max_examples=200, deadline=None)
@given(ids=memento_streams(), spec=st.sampled_from(SPECS), for_answer=st.booleans())
def test_mask_matches_the_engine_replayed_token_by_token(ids, spec, for_answer):
    keep, delim, restart = spec
    config = EvictionConfig(keep_last_n_blocks=keep, mask_delimiters=delim, restart=restart,
                            keep_last_block_for_answer=for_answer)
    assert torch.equal(memento_mask(ids, MARKERS, eviction=config), engine_mask(ids, keep, delim, restart, for_answer))


@settings(max_examples=200, deadline=None)
@given(ids=memento_streams(), spec=st.sampled_from(SPECS), for_answer=st.booleans())
def test_summary_end_sees_block_mask_matches_brute_force(ids, spec, for_answer):
    keep, delim, restart = spec
    got = memento_mask(ids, MARKERS, keep_last_n_blocks=keep, mask_delimiters=delim, restart=restart,
                       keep_last_block_for_answer=for_answer, summary_end_sees_block=True)
    assert torch.equal(got, legacy_reference_mask(ids, keep, delim, restart, for_answer))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(memento_streams(), min_size=1, max_size=4), left=st.booleans(), spec=st.sampled_from(SPECS))
def test_batched_mask_with_padding_equals_rows(rows, left, spec):  # the engine's timing
    keep, delim, restart = spec
    T = max(len(r) for r in rows)
    pad = 0
    ids = torch.full((len(rows), T), pad)
    real = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        real[i, sl] = True
    batch = memento_mask(ids, MARKERS, keep, delim, restart, padding_mask=real)
    assert batch.shape == (len(rows), T, T)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if left else slice(0, len(r))
        assert torch.equal(batch[i][sl, sl], engine_mask(r, keep, delim, restart))
        pads = (~real[i]).nonzero().flatten()
        assert not batch[i][real[i]][:, pads].any(), "a real query attends to padding"
        for p in pads:  # pad rows attend to themselves only
            assert batch[i, p].sum() == 1 and batch[i, p, p]


def test_worked_example_from_docstring():
    m = MARKERS
    ids = [7, m.think_start, m.block_start, 1, 2, m.block_end, m.summary_start, 3, m.summary_end,
           m.block_start, 4, m.block_end, m.summary_start, 5, m.summary_end]
    mask = memento_mask(ids, MARKERS)
    assert not mask[8:, 3:5].any()  # block 0's reasoning gone from its summary_end (8) on, that row included
    assert mask[7, 3:5].all()  # ... but the memento saw it
    assert mask[8:, 2].all() and mask[8:, 5].all()  # delimiters kept
    assert mask[8:, 6:9].all()  # memento kept
    assert not mask[14, 10] and mask[13, 10]  # block 1 hidden from its own summary_end too
    delim = memento_mask(ids, MARKERS, mask_delimiters=True)
    assert not delim[8:, 2:6].any()
    legacy = memento_mask(ids, MARKERS, summary_end_sees_block=True)  # the earlier, non-default timing
    assert legacy[8, 3:5].all() and not legacy[9:, 3:5].any() and legacy[14, 10]


def test_keep_minus_one_is_causal():
    ids = [1, MARKERS.think_start, MARKERS.block_start, 2, MARKERS.block_end, MARKERS.summary_start, 3,
           MARKERS.summary_end, 4]
    assert torch.equal(memento_mask(ids, MARKERS, keep_last_n_blocks=-1), torch.ones(9, 9, dtype=torch.bool).tril())


def test_restart_memento_cannot_see_its_block():
    m = MARKERS
    ids = [m.think_start, m.block_start, 1, 2, m.block_end, m.summary_start, 3, m.summary_end]
    normal = memento_mask(ids, MARKERS)
    restart = memento_mask(ids, MARKERS, restart=True)
    assert normal[5:7, 2:4].all()
    # the engine: <|block_start|> .. <|block_end|> (1-4) evicted inclusive, the memento from
    # <|summary_start|> (5) recomputed without them; the <|block_end|> itself is gone, not re-encoded
    assert not restart[5:8, 1:5].any() and restart[7, 5:8].all() and restart[5:8, 0].all()
    assert torch.equal(restart[:5], normal[:5])
    legacy = memento_mask(ids, MARKERS, restart=True, summary_end_sees_block=True)
    assert not legacy[4:8, 2:4].any() and legacy[4:8, 1].all() and legacy[5:8, 4].all()  # delimiters kept


def test_unfinished_memento_is_not_restarted():
    m = MARKERS
    ids = [m.think_start, m.block_start, 1, m.block_end, m.summary_start, 3]
    assert torch.equal(memento_mask(ids, MARKERS, restart=True), memento_mask(ids, MARKERS))


def test_additive_form():
    mask = torch.tensor([[True, False], [True, True]])
    add = additive_mask(mask)
    assert add.shape == (1, 1, 2, 2)
    assert add[0, 0, 0, 1] == torch.finfo(torch.float32).min and add[0, 0, 1, 0] == 0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="keep_last_n_blocks"):
        mask_from_spans(parse_spans([1], MARKERS), EvictionConfig(keep_last_n_blocks=-2))
    with pytest.raises(ValueError, match="not both"):
        memento_mask([1], MARKERS, keep_last_n_blocks=1, eviction=EvictionConfig())
    with pytest.raises(ValueError, match="prompt_len has 1 entries for a batch of 2"):
        memento_mask(torch.ones(2, 3, dtype=torch.long), MARKERS, prompt_len=[1])
    with pytest.raises(ValueError, match="1-D"):
        memento_mask(torch.zeros(1, 1, 3, dtype=torch.long), MARKERS)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="not contiguous"):
        memento_mask(ids, MARKERS, padding_mask=torch.tensor([[1, 0, 1]]))
    bad = torch.tensor([[MARKERS.think_start, MARKERS.block_end]])
    with pytest.raises(ValueError, match="batch row 0.*position 1"):
        memento_mask(bad, MARKERS, padding_mask=torch.ones(1, 2))


def test_long_trace_keeps_only_recent_blocks():
    """A 4K-token trace (its build time is measured in experiments/bench_mask.py)."""
    m = MARKERS
    ids = [1, m.think_start]
    while len(ids) < 4000:
        ids += [m.block_start, *[2] * 300, m.block_end, m.summary_start, *[3] * 30, m.summary_end]
    ids.append(m.think_end)  # a query after the last summary_end: every block is complete for it
    mask = memento_mask(ids, MARKERS, keep_last_n_blocks=1)
    spans = parse_spans(ids, MARKERS)
    visible_reasoning = mask[-1][torch.tensor([k == 1 for k in spans.kinds])].sum()
    assert mask.shape == (len(ids), len(ids)) and visible_reasoning == 300  # only the last block's 300
