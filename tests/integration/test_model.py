"""Model factory: presets, special-token initialisation, save/load round trips."""

import torch
from transformers import Qwen3ForCausalLM

from leakage.config import INIT_WORDS, MEMENTO_TOKENS
from leakage.engine.model import add_memento_tokens, build_tokenizer, count_parameters, load_model, qwen3_config, save_model
from leakage.memento.spans import MarkerIds


def test_tiny_preset_is_the_papers_toy_scale(tiny):
    model, tokenizer = tiny
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim) == (4, 128, 4, 2, 32)
    assert 0.7e6 < count_parameters(model) < 0.9e6
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    MarkerIds.from_tokenizer(tokenizer)  # all six markers are single tokens


def test_new_embeddings_are_mean_of_related_words_plus_small_noise():
    tokenizer = build_tokenizer()
    torch.manual_seed(1)
    model = Qwen3ForCausalLM(qwen3_config("tiny", len(tokenizer), tokenizer))
    before = model.get_input_embeddings().weight.detach().clone()
    added = add_memento_tokens(model, tokenizer, seed=3)
    assert sorted(added) == sorted(MEMENTO_TOKENS)
    table = model.get_input_embeddings().weight
    for token, token_id in added.items():
        related = [tokenizer.convert_tokens_to_ids(w) for w in INIT_WORDS[token]]
        expected = before[related].mean(0)
        diff = table[token_id] - expected
        assert 0.002 < diff.std() < 0.02, "noise should be N(0, 0.01)"
    assert torch.equal(model.lm_head.weight, table), "tied head follows the embedding"
    assert add_memento_tokens(model, tokenizer) == {}, "adding twice is a no-op"


def test_init_falls_back_to_mean_of_all_embeddings():
    tokenizer = build_tokenizer(words=("x", "y", "z"))
    torch.manual_seed(2)
    model = Qwen3ForCausalLM(qwen3_config("tiny", len(tokenizer), tokenizer))
    mean_all = model.get_input_embeddings().weight.detach().mean(0).clone()
    added = add_memento_tokens(model, tokenizer, seed=0)
    row = model.get_input_embeddings().weight[added[MEMENTO_TOKENS[0]]]
    assert (row - mean_all).abs().max() < 0.06


def test_save_load_round_trip_is_bit_exact(tiny, tmp_path):
    model, tokenizer = tiny
    path = save_model(model, tokenizer, tmp_path / "ckpt")
    loaded, tok2 = load_model(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert tok2.get_vocab() == tokenizer.get_vocab()
    ids = torch.tensor([[tokenizer.convert_tokens_to_ids("<think>"), 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directory left behind"


def test_checkpoint_without_markers_gets_them_on_load(tmp_path):
    tokenizer = build_tokenizer()
    model = Qwen3ForCausalLM(qwen3_config("tiny", len(tokenizer), tokenizer))
    save_model(model, tokenizer, tmp_path / "plain")
    loaded, tok = load_model(tmp_path / "plain")
    markers = MarkerIds.from_tokenizer(tok)
    assert loaded.get_input_embeddings().weight.shape[0] == len(tok) > markers.summary_end


def test_load_refuses_a_non_checkpoint(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_device_map_places_the_weights_and_every_input_follows(tiny, tmp_path, monkeypatch):
    """`device_map` (argument, or `$LEAKAGE_DEVICE_MAP`) reaches `from_pretrained`: "cpu" loads the same weights
    (the only device on the CI machine), and a device that does not exist is refused by name instead of
    silently loading on the CPU; `input_device` is where the inputs of every view go."""
    import pytest

    import leakage.engine.model as module
    from leakage.engine.views import input_device, to_bridge, to_nnsight

    model, tokenizer = tiny
    path = save_model(model, tokenizer, tmp_path / "ckpt")
    asked, real = [], module.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        asked.append(kwargs.get("device_map"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module.AutoModelForCausalLM, "from_pretrained", spy)
    for device_map, variable in (("cpu", None), (None, "cpu")):
        if variable is None:
            monkeypatch.delenv(module.DEVICE_MAP_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(module.DEVICE_MAP_VARIABLE, variable)
        loaded, _ = load_model(path, device_map=device_map)
        assert asked[-1] == "cpu"
        for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), name
        assert {input_device(view) for view in (loaded, to_nnsight(loaded))} == {torch.device("cpu")}
    monkeypatch.setenv(module.DEVICE_MAP_VARIABLE, "no-such-device")
    with pytest.raises((ValueError, RuntimeError), match="no-such-device"):
        load_model(path)
    monkeypatch.delenv(module.DEVICE_MAP_VARIABLE)
    load_model(path)
    assert asked[-1] is None  # unset: HF's default, the CPU, as before
    assert input_device(to_bridge(model)) == torch.device("cpu")
