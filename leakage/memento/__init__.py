"""The method, as data and masks: trace format, span tracker, eviction schedule, named positions, masks, KV
accounting. Pure Python and torch tensors; never touches a model.

    trace      MementoTrace, Named pieces, OpenMementos records
    spans      token ids -> per-position kinds and block spans (the block tracker)
    schedule   spans + EvictionConfig -> eviction / recompute events (the one place the rule lives)
    positions  named positions (sites) of every part of a sequence
    mask       schedule -> the memento attention mask (dense), and restart decoding unrolled
    kv         KV cache sizes per step, peak, AUC; a model-free simulator
"""
