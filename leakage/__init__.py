"""leakage: Memento reimplemented on HF causal LMs, and tools to measure what erased blocks leak.

Data flows one way: trace -> token ids -> spans -> mask -> model -> KV cache -> experiments -> figures.
"""

from leakage.config import MEMENTO_TOKENS, MODEL_PRESETS, ModelPreset
from leakage.hooks import CachedKV, collect_kv, key_hook, value_hook
from leakage.mask import additive_mask, format_mask, mask_from_spans, memento_mask
from leakage.model import add_memento_tokens, build_model, build_tokenizer, load_model, save_model
from leakage.spans import BlockSpan, MalformedTraceError, MarkerIds, SpanKind, SpanTracker, TraceSpans, parse_spans
from leakage.trace import MementoTrace, OpenMementosRecord, read_openmementos, write_openmementos
from leakage.views import to_bridge, to_nnsight

__all__ = [
    "MEMENTO_TOKENS", "MODEL_PRESETS", "ModelPreset",
    "CachedKV", "collect_kv", "key_hook", "value_hook",
    "additive_mask", "format_mask", "mask_from_spans", "memento_mask",
    "add_memento_tokens", "build_model", "build_tokenizer", "load_model", "save_model",
    "BlockSpan", "MalformedTraceError", "MarkerIds", "SpanKind", "SpanTracker", "TraceSpans", "parse_spans",
    "MementoTrace", "OpenMementosRecord", "read_openmementos", "write_openmementos",
    "to_bridge", "to_nnsight",
]
