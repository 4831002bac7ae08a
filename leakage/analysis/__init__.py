"""Measurements of what an evicted block leaks, one runner per analysis.

Every runner module exposes a frozen `Spec` (what to measure: checkpoint, task, eviction, sizes, seed) and
`run(spec, out=None) -> Record` (`leakage.analysis.record`): the result rows, the spec, the weights'
SHA-256, the package version and timings, written as CSV + JSON + PNG under the path stem `out`.

    evaluation   task accuracy under memento, restart and full-attention decoding (`leakage eval`)
    consistency  the engine's timing vs summary_end_sees_block; decoder vs masked forward
    restart      the restart ablation with the memento text held identical
    probing      the passcode probe: conditions, controls, sweeps (probe, probe_data: the probes and datasets)
    patch_maps   KV patching maps (patching: the generic patch, in TransformerLens's shape; twins: the pairs)
    ablation     KV ablation sweep (ablation kinds are a registry)
    erasure      LEACE against a random subspace
    capacity     the channel's capacity against distance
    benchmark    every eviction method (memento, restart, full, kvpress presses) on one leakage table
    audit        one eviction method's recoverable bits and answer accuracy on an evicted passcode
    rl_analysis  before/after RL
"""
