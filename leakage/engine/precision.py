"""Precision: the dtype a model computes in, and the dtype its KV cache stores, applied as an engine applies them.

    precision = PRECISION_PRESETS["kv_fp8_head"]            # or Precision(compute=..., kv=..., kv_scale=...)
    scales = calibrate(model, calibration_ids, precision)    # fp8: amax per layer (and per KV head)
    run_model = with_precision(model, precision, scales)     # a copy; `model` is left as it was
    model, tokenizer = load_at_precision(path, precision, calibration)  # what the runners do
    teacher_force(run_model, ...), capture(run_model, ...)   # every analysis runs on it unchanged

What is stored (`Precision.kv`), per key and value vector of one token and one KV head:
* `compute`: as computed (the model's dtype); `bfloat16`, `float16`: rounded to that dtype;
* `fp8_e4m3`, `fp8_e5m2`: divided by a static scale, saturated to the format's largest finite value,
  rounded to fp8, multiplied back (vLLM's fp8 KV cache). Scales (`kv_scale`): `unit` (all 1.0: vLLM's
  default without calibration), `tensor` (one per layer for keys and one for values: amax / fp8 max over
  a calibration set, as llm-compressor and HF's `Fp8QuantizedLayer` compute it) or `head` (one per layer
  and KV head: vLLM's per-attention-head scales);
* `int8`, `int4`: asymmetric min-max integers over the vector's d_head values (one scale and zero point
  per token and KV head, KIVI-style groups of d_head).

When it is stored: as in the official engine's vLLM, every key and value is quantised when written to
the cache (prefill and decode alike, the current token included) and attention reads the dequantised
cache. Each rule above is a function of one stored vector and fixed scales, so quantising the keys and
values the attention function receives (what `with_precision` installs, around the model's own eager
attention) computes exactly what storing quantised vectors computes: masked forward and eviction
decoding stay equal, and `kv_storage` gives the capture what the cache holds.

Deliberate differences, named: HF's `QuantizedCache` keeps the last `residual_length` tokens unquantised
and quantises whole-cache groups along channels (history-dependent); here every token is stored
quantised on its own. FlashAttention-3's fp8 path also quantises queries; here queries stay in the
compute dtype. Scales are calibrated with a plain causal forward (no memento mask), as a calibration
tool runs the model.

Only the HF module view: the TransformerLens bridge replaces the attention function with its own.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import AttentionInterface, DynamicCache

from leakage.engine.cache import cache_layers
from leakage.engine.model import load_checkpoint
from leakage.engine.views import check_token_ids, hf_module, input_device, is_bridge, is_nnsight, vocab_size

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FP8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
INT_BITS = {"int8": 8, "int4": 4}
KV_KINDS = ("compute", "bfloat16", "float16", *FP8, *INT_BITS)
SCALE_KINDS = ("unit", "tensor", "head")
ATTENTION = "leakage_stored_kv"
"""The attention implementation `with_precision` installs: the model's eager attention on stored keys and values."""


@dataclass(frozen=True)
class Precision:
    """Compute and KV-storage precision of one run (module docstring).

    compute: dtype of weights and activations: float32, bfloat16 or float16.
    kv: what the KV cache stores: compute (as computed), bfloat16, float16, fp8_e4m3, fp8_e5m2, int8 or int4.
    kv_scale: fp8 scales: unit (1.0, vLLM's default), tensor (per layer, calibrated) or head (per layer and
        KV head, calibrated).
    """

    compute: str = "float32"
    kv: str = "compute"
    kv_scale: str = "tensor"

    def __post_init__(self):
        if self.compute not in COMPUTE_DTYPES:
            raise ValueError(f"compute dtype must be one of {sorted(COMPUTE_DTYPES)}, got {self.compute!r}")
        if self.kv not in KV_KINDS:
            raise ValueError(f"kv must be one of {KV_KINDS}, got {self.kv!r}")
        if self.kv_scale not in SCALE_KINDS:
            raise ValueError(f"kv_scale must be one of {SCALE_KINDS}, got {self.kv_scale!r}")

    @property
    def dtype(self) -> torch.dtype:
        return COMPUTE_DTYPES[self.compute]

    @property
    def calibrated(self) -> bool:
        """Whether the stored KV needs scales from a calibration set."""
        return self.kv in FP8 and self.kv_scale != "unit"

    @property
    def name(self) -> str:
        """'float32', 'bfloat16', 'float32 / kv fp8_e4m3 (head)': compute, then what the cache stores."""
        if self.kv == "compute":
            return self.compute
        return f"{self.compute} / kv {self.kv}" + (f" ({self.kv_scale})" if self.kv in FP8 else "")


PRECISION_PRESETS: dict[str, Precision] = {
    "float32": Precision(),
    "bf16": Precision(compute="bfloat16"),
    "fp16": Precision(compute="float16"),
    "kv_bf16": Precision(kv="bfloat16"),
    "kv_fp16": Precision(kv="float16"),
    "kv_fp8": Precision(kv="fp8_e4m3"),
    "kv_fp8_head": Precision(kv="fp8_e4m3", kv_scale="head"),
    "kv_fp8_unit": Precision(kv="fp8_e4m3", kv_scale="unit"),
    "kv_fp8_e5m2": Precision(kv="fp8_e5m2"),
    "kv_int8": Precision(kv="int8"),
    "kv_int4": Precision(kv="int4"),
    "bf16_kv_fp8": Precision(compute="bfloat16", kv="fp8_e4m3"),
}
"""Named precisions: the compute dtypes alone, each stored-KV kind on a float32 model, and the engine's
usual serving setting (bf16 weights, fp8 e4m3 cache with per-tensor scales)."""


def precision_preset(name: str) -> Precision:
    """A precision preset by name; the error lists the presets that exist."""
    try:
        return PRECISION_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown precision {name!r}; choose one of {sorted(PRECISION_PRESETS)}") from None


def quantise(x: torch.Tensor, kind: str, scale: torch.Tensor | None = None) -> torch.Tensor:
    """`x` (B, kv_heads, T, d_head) as the cache stores it under `kind` (module docstring), read back in
    x's dtype. `scale` (fp8 only): () or (kv_heads,), the stored value being round(x / scale) * scale."""
    if kind == "compute":
        return x
    if kind in ("bfloat16", "float16"):
        return x.to(COMPUTE_DTYPES[kind]).to(x.dtype)
    if kind in FP8:
        if scale is None:
            raise ValueError(f"{kind} needs a scale: () or (kv_heads,)")
        scale = scale.float().view(1, -1, 1, 1) if scale.dim() else scale.float()
        limit = torch.finfo(FP8[kind]).max
        stored = (x.float() / scale).clamp(-limit, limit).to(FP8[kind])
        return (stored.float() * scale).to(x.dtype)
    if kind in INT_BITS:
        levels = 2 ** INT_BITS[kind] - 1
        low, high = x.float().aminmax(dim=-1, keepdim=True)
        step = ((high - low) / levels).clamp_min(torch.finfo(torch.float32).tiny)
        zero = torch.round(-low / step)
        stored = (torch.round(x.float() / step) + zero).clamp(0, levels)
        return ((stored - zero) * step).to(x.dtype)
    raise ValueError(f"kv kind must be one of {KV_KINDS}, got {kind!r}")


@dataclass(frozen=True)
class LayerStorage:
    """How one layer's cache stores keys and values: the kind, and fp8 scales (() or (kv_heads,))."""

    kind: str
    key_scale: torch.Tensor | None = None
    value_scale: torch.Tensor | None = None

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return quantise(x, self.kind, self.key_scale)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        return quantise(x, self.kind, self.value_scale)


def _attention_modules(module) -> list:
    """The model's attention modules in layer order: the modules with a `layer_idx` and a `k_proj`."""
    found = [m for m in module.modules() if hasattr(m, "layer_idx") and hasattr(m, "k_proj")]
    return sorted(found, key=lambda m: m.layer_idx)


def _stored_kv_attention(module, query, key, value, attention_mask, **kwargs):
    """The model's own eager attention over the keys and values as its cache stores them."""
    storage: LayerStorage = module.leakage_storage
    eager = getattr(inspect.getmodule(type(module)), "eager_attention_forward", None)
    if eager is None:
        raise TypeError(f"{type(module).__name__}'s module defines no eager_attention_forward to wrap")
    return eager(module, query, storage.keys(key), storage.values(value), attention_mask, **kwargs)


AttentionInterface.register(ATTENTION, _stored_kv_attention)


@torch.no_grad()
def calibrate(model, calibration_ids: Sequence[Sequence[int]], precision: Precision) -> list[dict[str, torch.Tensor]]:
    """Per layer {"key_scale", "value_scale"}: amax / fp8 max over `calibration_ids` (each a sequence, run
    alone through a plain causal forward of `model` cast to `precision.compute`), per tensor () or per KV
    head (kv_heads,) as `precision.kv_scale` says; [] when `precision` needs no calibration."""
    if not precision.calibrated:
        return []
    if not calibration_ids:
        raise ValueError(f"{precision.name} needs calibration sequences for its fp8 scales; got none")
    module = copy.deepcopy(hf_module(model)).to(precision.dtype)
    check_token_ids([list(s) for s in calibration_ids], vocab_size(module))
    reduce = (0, 2, 3) if precision.kv_scale == "head" else (0, 1, 2, 3)
    amax: list[list[torch.Tensor]] | None = None
    for ids in calibration_ids:
        cache = DynamicCache(config=module.config)
        module(torch.tensor([list(ids)], device=input_device(module)), past_key_values=cache, use_cache=True)
        seen = [[layer.keys.float().abs().amax(reduce), layer.values.float().abs().amax(reduce)]
                for layer in cache_layers(cache)]
        amax = seen if amax is None else [[torch.maximum(a, b) for a, b in zip(old, new)] for old, new in zip(amax, seen)]
    limit = torch.finfo(FP8[precision.kv]).max
    tiny = torch.finfo(torch.float32).tiny
    return [{"key_scale": (k / limit).clamp_min(tiny), "value_scale": (v / limit).clamp_min(tiny)} for k, v in amax]


def with_precision(model, precision: Precision, scales: list[dict[str, torch.Tensor]] | None = None):
    """A copy of the HF module `model` computing in `precision.compute` whose cache stores keys and values
    as `precision.kv` says (`scales` from `calibrate` where it needs them). `model` itself is unchanged;
    `Precision()` (float32, stored as computed) returns a plain copy."""
    if is_bridge(model) or is_nnsight(model):
        raise TypeError("with_precision takes the HF module: the TransformerLens bridge replaces the attention "
                        "function that stores keys and values; build views over the returned model instead")
    out = copy.deepcopy(model).to(precision.dtype).eval()
    if precision.kv == "compute":
        return out
    layers = _attention_modules(out)
    if not layers:
        raise TypeError(f"{type(model).__name__} has no attention modules with layer_idx and k_proj")
    if precision.kv in FP8:
        if precision.kv_scale == "unit":
            scales = [{"key_scale": torch.tensor(1.0), "value_scale": torch.tensor(1.0)}] * len(layers)
        elif scales is None or len(scales) != len(layers):
            raise ValueError(f"{precision.name} needs calibrated scales for {len(layers)} layers (`calibrate`); "
                             f"got {None if scales is None else len(scales)}")
    for i, attention in enumerate(layers):
        attention.leakage_storage = LayerStorage(precision.kv, **(scales[i] if precision.kv in FP8 else {}))
    out.set_attn_implementation(ATTENTION)
    return out


def kv_storage(model) -> list[LayerStorage]:
    """How each layer of `model`'s cache stores keys and values, in layer order: the storage `with_precision`
    installed, or as computed (`LayerStorage("compute")`, the identity) for any other model."""
    return [getattr(m, "leakage_storage", None) or LayerStorage("compute") for m in _attention_modules(hf_module(model))]


def at_precision(model, tokenizer, precision: Precision, calibration: Callable[[object], Sequence[Sequence[int]]]):
    """`model` itself when `precision` is float32 stored as computed, else its `with_precision` copy with fp8
    scales calibrated on `calibration(tokenizer)` (called only when the precision needs scales)."""
    if precision == Precision():
        return model
    return with_precision(model, precision, calibrate(model, calibration(tokenizer) if precision.calibrated else [],
                                                      precision))


def load_at_precision(checkpoint: str, precision: Precision, calibration: Callable[[object], Sequence[Sequence[int]]]):
    """(model, tokenizer): `checkpoint` loaded (`leakage.engine.model.load_checkpoint`) at `precision`
    (`at_precision`)."""
    model, tokenizer = load_checkpoint(checkpoint)
    return at_precision(model, tokenizer, precision, calibration), tokenizer
