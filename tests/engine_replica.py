"""An independent replay of the official engine's block masking, token by token, for the tests.

Written from reading microsoft/memento's vLLM overlay (`v1/core/block_masking/{tracker,processor}.py`
and the scheduler that drives them), sharing no code with `leakage`: per request a stack of open
blocks, a FIFO of completed blocks waiting for compaction, and on every *sampled* token a
`process_token` that may return a range to compact (and, in restart mode, a rewind point). The
scheduler compacts at once, so the compaction is in place before the forward pass that feeds the
token; a rewind recomputes every position from the rewind point through the new token.

`replay(ids, ...)` returns, per position, the logical positions its final keys/values attended
(its row of the mask) and the number of cache entries when it was first computed.
"""

from __future__ import annotations


def replay(ids, markers, keep_last_n_blocks, mask_delimiters, restart=False, keep_last_block_for_answer=False):
    m = markers
    prompt_len = ids.index(m.think_start) if m.think_start in ids else len(ids)
    open_blocks = []  # stack of block ids
    blocks = []  # dicts: start, end, summary_start, summary_end
    pending = []  # completed block ids, oldest first
    summary_of = None  # the block whose summary is open
    cache = []  # logical positions held, in order
    attended = [None] * len(ids)
    counts = []

    def compaction_range(block_id):
        b = blocks[block_id]
        if restart or mask_delimiters:
            return b["start"], b["end"] + 1
        return b["start"] + 1, b["end"]

    def pop_oldest():
        return pending.pop(0)

    deferred = keep_last_block_for_answer and keep_last_n_blocks == 0
    for p, t in enumerate(ids):
        compact, rewind = None, None
        if p >= prompt_len and keep_last_n_blocks >= 0:  # the prompt is prefilled, never tracked here
            if t == m.block_start:
                if deferred and pending:
                    flushed = pop_oldest()
                    compact = compaction_range(flushed)
                    if restart:
                        rewind = blocks[flushed]["summary_start"]
                blocks.append({"start": p, "end": None, "summary_start": None, "summary_end": None})
                open_blocks.append(len(blocks) - 1)
            elif t == m.block_end and open_blocks:
                blocks[open_blocks.pop()]["end"] = p
            elif t == m.summary_start:
                for block_id in reversed(range(len(blocks))):
                    if blocks[block_id]["end"] is not None and blocks[block_id]["summary_start"] is None:
                        blocks[block_id]["summary_start"] = p
                        summary_of = block_id
                        break
            elif t == m.summary_end and summary_of is not None:
                blocks[summary_of]["summary_end"] = p
                pending.append(summary_of)
                if not deferred and len(pending) > keep_last_n_blocks:
                    compact = compaction_range(pop_oldest())
                    if restart:
                        rewind = blocks[summary_of]["summary_start"]
                summary_of = None
        if compact is not None:  # compacted before the forward that feeds token p
            cache = [k for k in cache if not compact[0] <= k < compact[1]]
        first = p
        if rewind is not None:  # num_computed_tokens rewinds: [rewind, p] is recomputed
            cache = [k for k in cache if k < rewind]
            first = rewind
        if p >= len(counts):
            counts.append(len(cache) + p - first + 1)
        for q in range(first, p + 1):
            attended[q] = cache + list(range(first, q + 1))
        cache = cache + list(range(first, p + 1))
    return attended, counts
