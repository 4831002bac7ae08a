"""leakage: Memento reimplemented on HF causal LMs, and tools to measure what erased blocks leak.

Data flows one way: trace -> token ids -> spans -> mask -> model -> KV cache -> experiments -> figures.

Top-level names are imported on first use (PEP 562), so `import leakage` and `leakage --help` stay fast
and torch/transformers load only when a model-facing name is touched.
"""

import importlib

_EXPORTS = {
    "leakage.engine.cache": ["LiveCache"],
    "leakage.engine.capture": ["Captured", "capture"],
    "leakage.config": ["EVICTION_PRESETS", "MEMENTO_TOKENS", "MODEL_PRESETS", "EvictionConfig", "ModelPreset"],
    "leakage.engine.decode": ["Decoder", "Step", "force_policy", "generate", "sampling_policy", "teacher_force"],
    "leakage.engine.hooks": ["key_hook", "value_hook"],
    "leakage.memento.kv": ["KVTrace", "kv_bytes_per_token", "simulate_kv"],
    "leakage.memento.mask": ["additive_mask", "format_mask", "mask_from_spans", "memento_mask"],
    "leakage.memento.positions": ["Site", "TracePositions", "trace_positions"],
    "leakage.memento.schedule": ["Eviction", "EvictionSchedule", "Recompute", "eviction_schedule"],
    "leakage.engine.model": ["add_memento_tokens", "build_model", "build_tokenizer", "load_model", "save_model"],
    "leakage.memento.spans": ["BlockSpan", "MalformedTraceError", "MarkerIds", "SpanKind", "SpanTracker", "TraceSpans",
                      "parse_spans"],
    "leakage.memento.trace": ["MementoTrace", "Named", "OpenMementosRecord", "read_openmementos", "write_openmementos"],
    "leakage.engine.views": ["to_bridge", "to_nnsight"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'leakage' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
