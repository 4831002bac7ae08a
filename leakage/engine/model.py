"""Build, extend, save and load HF causal LMs for Memento.

* `build_tokenizer()`: a real HF tokenizer (`tokenizers` WordLevel + `PreTrainedTokenizerFast`) for
  the synthetic tasks: whitespace-separated words, digits as single tokens.
* `build_model(preset)`: a tiny Qwen3-architecture model from a named preset, with the Memento
  markers added through `add_memento_tokens` — the same path any real checkpoint takes.
* `load_model(path)` / `save_model(...)`: local HF checkpoint directories (no network, ever);
  `load_checkpoint(path)` is what the analyses load: it warns (`FormatWarning`) when the checkpoint was
  never trained on the Memento format, whose markers are then added with fresh embeddings.
* `checkpoint_sha256(path)`: what a result computed from a checkpoint depends on, its weights' bytes.

Random initialisation runs inside `leakage.seeding.seeded`: building a model never moves the caller's
random stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (AddedToken, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config,
                          Qwen3ForCausalLM)

from leakage.config import (INIT_NOISE_STD, INIT_WORDS, MEMENTO_TOKENS, SYNTHETIC_WORDS, THINK_END, THINK_START,
                            ModelPreset, model_preset)
from leakage.seeding import seeded

PAD, UNK, EOS = "<pad>", "<unk>", "<|endoftext|>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
"""Files one of which an HF tokenizer directory holds."""
DEVICE_MAP_VARIABLE = "LEAKAGE_DEVICE_MAP"
"""The environment variable naming the default `device_map` of `load_model` (unset: the CPU)."""



def build_tokenizer(words: tuple[str, ...] = SYNTHETIC_WORDS) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over `words` plus pad/unk/eos and `<think>`/`</think>` (no Memento markers yet).

    Text is split on whitespace; decoding joins tokens with single spaces.
    """
    specials = [PAD, UNK, EOS, THINK_START, THINK_END]
    if len(set(words)) != len(words):
        raise ValueError("duplicate words in the tokenizer vocabulary")
    vocab = {token: i for i, token in enumerate([*specials, *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, unk_token=UNK, eos_token=EOS)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], special_tokens=True)
    return tokenizer


def qwen3_config(preset: str | ModelPreset, vocab_size: int, tokenizer=None) -> Qwen3Config:
    """Qwen3 config (RoPE, GQA, QK-norm, tied embeddings) for a `ModelPreset` or its name."""
    p = model_preset(preset) if isinstance(preset, str) else preset
    special = {}
    if tokenizer is not None:
        special = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=p.d_model, intermediate_size=p.d_mlp, num_hidden_layers=p.n_layers,
        num_attention_heads=p.n_heads, num_key_value_heads=p.n_kv_heads, head_dim=p.d_head,
        max_position_embeddings=p.max_positions, rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta},
        tie_word_embeddings=True, architectures=["Qwen3ForCausalLM"], **special,
    )
    # Eager attention: the TransformerLens bridge switches its module to eager anyway, and one
    # attention kernel for every view keeps HF, bridge and nnsight logits bit-identical.
    config._attn_implementation = "eager"
    return config


def build_model(preset: str | ModelPreset = "tiny", seed: int = 0) -> tuple[Qwen3ForCausalLM, PreTrainedTokenizerFast]:
    """A freshly initialised Qwen3 model of a preset and its synthetic tokenizer, Memento markers added.

    Deterministic given `seed`. The model is in eval mode, float32, on the CPU.
    """
    tokenizer = build_tokenizer()
    with seeded(seed):
        model = Qwen3ForCausalLM(qwen3_config(preset, len(tokenizer), tokenizer))
    add_memento_tokens(model, tokenizer, seed=seed)
    return model.eval(), tokenizer


def _related_token_ids(tokenizer, words) -> list[int]:
    """Ids of `words` that are single tokens (as-is, with a leading space, or BPE's 'Ġ' form)."""
    found = []
    for word in words:
        for candidate in (word, "Ġ" + word, "▁" + word):
            token_id = tokenizer.convert_tokens_to_ids(candidate)
            if token_id is not None and token_id != tokenizer.unk_token_id:
                found.append(token_id)
                break
        else:
            encoded = tokenizer.encode(" " + word, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] != tokenizer.unk_token_id:
                found.append(encoded[0])
    return found


@torch.no_grad()
def add_memento_tokens(model, tokenizer, seed: int = 0) -> dict[str, int]:
    """Add the four Memento markers (and `<think>`/`</think>` if missing) to a model and its tokenizer.

    New embedding rows start as the mean of the embeddings of the paper's related words plus
    N(0, 0.01) noise; when none of those words is a single token, the mean of all embeddings. An untied
    output head gets the same treatment on its rows; a tied one follows the input embedding.
    Tokens already present are left untouched. Returns {token: id} for the tokens that were added.
    """
    missing = missing_memento_tokens(tokenizer)
    if not missing:
        return {}
    old_rows = model.get_input_embeddings().weight.shape[0]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    with seeded(seed):  # HF initialises the new rows from torch's global generator; they are overwritten below
        model.resize_token_embeddings(max(len(tokenizer), old_rows), mean_resizing=False)

    generator = torch.Generator().manual_seed(seed)
    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != tables[0].data_ptr():
        tables.append(output.weight)
    added = {}
    for token in missing:
        token_id = tokenizer.convert_tokens_to_ids(token)
        related = [i for i in _related_token_ids(tokenizer, INIT_WORDS.get(token, ())) if i < old_rows]
        for table in tables:
            base = table[related].mean(0) if related else table[:old_rows].mean(0)
            noise = torch.randn(base.shape, generator=generator) * INIT_NOISE_STD
            table[token_id] = base + noise.to(table.dtype)
        added[token] = token_id
    return added


TRAINED_WITH = "leakage.json"
"""The file in a checkpoint saved by this package that says what it was trained on (`checkpoint_record`)."""


def save_model(model, tokenizer, path: str | Path, record: dict | None = None) -> Path:
    """Save model + tokenizer as an HF checkpoint directory, atomically (temp dir, then rename); `record` (what
    the model was trained on: task, eviction, code) goes into `leakage.json` beside the weights."""
    from leakage.io import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if record is not None:
            atomic_write_json(staging / TRAINED_WITH, record)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def load_model(path: str | Path, add_tokens: bool = True, seed: int = 0, device_map: str | dict | None = None):
    """Load a local HF checkpoint directory (model + tokenizer), float32, eval mode, never downloading.

    With `add_tokens=True`, Memento markers missing from the checkpoint are added (see
    `add_memento_tokens`), so any causal LM checkpoint can be used the same way.
    `device_map`: where the weights go, as HF's `from_pretrained` takes it ("cpu", "cuda", "auto": spread over
    every GPU, then the CPU); default `$LEAKAGE_DEVICE_MAP` (`DEVICE_MAP_VARIABLE`), else the CPU. Every
    analysis moves its inputs to the model's input device (`leakage.engine.views.input_device`), so
    `LEAKAGE_DEVICE_MAP=auto leakage probe ...` runs a runner on the GPUs unchanged.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not an HF checkpoint directory (no config.json)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); a checkpoint without "
                                "its tokenizer cannot be used (its ids would mean nothing)")
    check_weight_files(path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                 attn_implementation="eager",
                                                 device_map=device_map or os.environ.get(DEVICE_MAP_VARIABLE) or None)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: weight {name} holds {int((~torch.isfinite(tensor)).sum())} NaN or infinite "
                             "values; a model with non-finite weights computes nothing meaningful")
    if add_tokens:
        add_memento_tokens(model, tokenizer, seed=seed)
    return model.eval(), tokenizer


def check_weight_files(path: str | Path) -> None:
    """Raise naming the file when a checkpoint's `*.safetensors` are missing, empty, truncated or damaged."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files and not any(Path(path).glob("*.bin")):
        raise FileNotFoundError(f"{path} holds no weights (*.safetensors)")
    for file in files:
        try:
            with safe_open(file, framework="pt") as weights:  # checks the header against the file's size
                for name in weights.keys():
                    weights.get_slice(name).get_shape()
        except Exception as err:  # safetensors raises its own error type for a damaged header
            raise ValueError(f"{file}: damaged or truncated weights ({type(err).__name__}: {err})") from None


def check_trained_task(path: str | Path, task, force: bool = False) -> None:
    """Refuse to run an analysis of `task` (a `TaskConfig`, or a task name) on a checkpoint this package trained
    on another task or another memento format (text vs gist tokens; its `leakage.json` says which), unless
    `force`; checkpoints from elsewhere record nothing and pass."""
    record = (checkpoint_record(path) or {}).get("task") or {}
    name = task if isinstance(task, str) else task.task
    trained = record.get("task")
    if trained is not None and trained != name and not force:
        raise ValueError(f"{path} was trained on the {trained!r} task, not {name!r}: its results on {name!r} would "
                         "mean nothing; pass --force to run anyway")
    gists = record.get("gist_tokens", 0)
    if trained is not None and not isinstance(task, str) and gists != task.gist_tokens and not force:
        raise ValueError(f"{path} was trained with gist_tokens={gists}, not {task.gist_tokens}: its mementos are "
                         f"{'gist tokens' if gists else 'text'}; pass --gist-tokens {gists} (or --force)")


def checkpoint_record(path: str | Path) -> dict | None:
    """What a checkpoint saved by this package was trained on (`leakage.json`: task, eviction, code), or None
    for a checkpoint from elsewhere."""
    file = Path(path) / TRAINED_WITH
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err.msg}, line {err.lineno})") from None


class FormatWarning(UserWarning):
    """A checkpoint that was never trained on the Memento format: its scores are not a trained model's."""


def load_checkpoint(path: str | Path, device_map: str | dict | None = None):
    """`load_model` for an analysis (`device_map` as there): a checkpoint missing the Memento markers gets them
    (fresh embeddings) and a `FormatWarning` naming it, so that its scores are not mistaken for a trained model's."""
    from leakage.engine.views import architecture_name

    model, tokenizer = load_model(path, add_tokens=False, device_map=device_map)
    missing = missing_memento_tokens(tokenizer)
    if missing:
        add_memento_tokens(model, tokenizer)
        warnings.warn(f"{path} ({architecture_name(model)}) has no {', '.join(missing)} in its tokenizer: it was never "
                      "trained on the Memento format; the markers were added with fresh embeddings", FormatWarning,
                      stacklevel=2)
    return model, tokenizer


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint's weights: the bytes of its `*.safetensors` files in name order (one file:
    that file's hash)."""
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} holds no *.safetensors weights")
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def missing_memento_tokens(tokenizer) -> list[str]:
    """The format markers a tokenizer does not know (a checkpoint never trained on the Memento format)."""
    return [t for t in (THINK_START, THINK_END, *MEMENTO_TOKENS)
            if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]


def count_parameters(model) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def untrained_like(model, seed: int = 0):
    """A freshly initialised model of `model`'s architecture and config (same vocabulary), eval mode:
    the random-init control of an experiment."""
    with seeded(seed):
        fresh = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32, attn_implementation="eager")
    return fresh.eval()
