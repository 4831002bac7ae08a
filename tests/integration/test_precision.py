"""Precision: stored-KV quantisers as an engine applies them, and mask == evict at every precision."""

import numpy as np
import pytest
import torch

from leakage.config import EvictionConfig, ModelPreset
from leakage.engine.capture import capture
from leakage.engine.decode import teacher_force
from leakage.engine.model import build_model
from leakage.engine.precision import (FP8, PRECISION_PRESETS, Precision, calibrate, kv_storage, quantise,
                                      with_precision)
from leakage.engine.views import to_bridge
from leakage.memento.mask import additive_mask, memento_mask
from leakage.memento.trace import MementoTrace
from leakage.training.tasks import TaskConfig

MODELS = {
    "tiny": build_model("tiny", seed=11),  # GQA 4 query heads / 2 KV heads
    "other": build_model(ModelPreset(n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, d_head=32, d_mlp=128), seed=5),
}
TOKENIZER = MODELS["tiny"][1]
ROWS = [MementoTrace("sum", [("1 2 3", "6"), ("4 5", "9"), ("7", "1 6")], "1 6").to_ids(TOKENIZER),
        MementoTrace("what", [("1", "1 2"), ("4 5 6 7", "9")], "9").to_ids(TOKENIZER)]


def dense_logits(model, ids, eviction, dtype=torch.float32):
    mask = additive_mask(memento_mask(ids, TOKENIZER, eviction=eviction)).to(dtype)
    with torch.no_grad():
        return model(torch.tensor([ids]), attention_mask=mask).logits[0].float()


def test_fp8_storage_is_the_saturated_fp8_cast_of_x_over_scale():
    x = torch.tensor([[[[0.0, 1e-4, 0.3, -2.7, 5.0, 600.0, -1e4, 448.0]]]])  # (1, 1, 1, 8)
    scale = torch.tensor(0.5)
    stored = quantise(x, "fp8_e4m3", scale)
    expected = (x / 0.5).clamp(-448, 448).to(torch.float8_e4m3fn).float() * 0.5
    assert torch.equal(stored, expected)
    assert stored.abs().max() == 448 * 0.5  # saturated, not NaN (e4m3fn has no inf)
    assert torch.equal(quantise(stored, "fp8_e4m3", scale), stored)  # idempotent: storing twice stores once
    e5m2 = quantise(-1e6 * x.abs().clamp_min(1), "fp8_e5m2", torch.tensor(1.0))
    assert (e5m2 == -torch.finfo(torch.float8_e5m2).max).all()  # saturated too, not -inf


def test_per_head_scales_scale_each_kv_head_alone():
    heads = torch.tensor([1.0, 100.0, 0.001]).view(1, 3, 1, 1)  # three KV heads of very different sizes
    x = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(0)) * heads
    scales = x.abs().amax((0, 2, 3)) / 448
    per_head = quantise(x, "fp8_e4m3", scales)
    for h in range(3):
        assert torch.equal(per_head[:, h], quantise(x[:, h:h + 1], "fp8_e4m3", scales[h])[:, 0])
    per_tensor = quantise(x, "fp8_e4m3", x.abs().max() / 448)
    small = (x[:, 2] - per_tensor[:, 2]).abs().max(), (x[:, 2] - per_head[:, 2]).abs().max()
    assert small[1] < small[0]  # the small head falls below fp8 subnormals under the shared scale


@pytest.mark.parametrize("kind,bits", [("int8", 8), ("int4", 4)])
def test_integer_storage_is_asymmetric_min_max_per_token_and_head(kind, bits):
    x = torch.randn(2, 2, 7, 16, generator=torch.Generator().manual_seed(1))
    stored = quantise(x, kind)
    low, high = x.aminmax(dim=-1, keepdim=True)
    step = (high - low) / (2 ** bits - 1)
    assert ((stored - x).abs() <= step / 2 + step * 1e-5 + 1e-7).all()  # round to nearest: half a step at most
    levels = stored / step  # on the grid (q - zero) * step, q an integer in [0, 2^bits - 1]
    assert ((levels - levels.round()).abs() < 1e-3).all()
    assert (levels.amax(-1) - levels.amin(-1) <= 2 ** bits - 1 + 1e-3).all()
    for kind16, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        assert torch.equal(quantise(x, kind16), x.to(dtype).float())


def test_calibrated_scales_are_amax_over_fp8_max_per_tensor_and_per_head():
    model, _ = MODELS["tiny"]
    tensor = calibrate(model, ROWS, Precision(kv="fp8_e4m3", kv_scale="tensor"))
    head = calibrate(model, ROWS, Precision(kv="fp8_e4m3", kv_scale="head"))
    kv_heads = model.config.num_key_value_heads
    assert len(tensor) == len(head) == model.config.num_hidden_layers
    for layer in range(len(tensor)):
        assert tensor[layer]["key_scale"].shape == () and head[layer]["key_scale"].shape == (kv_heads,)
        assert torch.allclose(head[layer]["value_scale"].max(), tensor[layer]["value_scale"])
    captured = capture(model, TOKENIZER, ROWS[:1], EvictionConfig(keep_last_n_blocks=-1), ["think_start"])
    assert captured.keys  # the capture runs; amax below is from a plain forward of each row
    with torch.no_grad():
        from transformers import DynamicCache
        amax = torch.zeros(())
        for ids in ROWS:
            cache = DynamicCache(config=model.config)
            model(torch.tensor([ids]), past_key_values=cache, use_cache=True)
            amax = torch.maximum(amax, cache.layers[0].keys.abs().max())
    assert torch.allclose(tensor[0]["key_scale"], amax / torch.finfo(FP8["fp8_e4m3"]).max)
    assert calibrate(model, ROWS, Precision(kv="fp8_e4m3", kv_scale="unit")) == []
    with pytest.raises(ValueError, match="calibration sequences"):
        calibrate(model, [], Precision(kv="fp8_e4m3"))


def test_with_precision_copies_and_leaves_the_model_as_it_was():
    model, _ = MODELS["tiny"]
    before = dense_logits(model, ROWS[0], EvictionConfig())
    fp8 = with_precision(model, PRECISION_PRESETS["kv_fp8_unit"])
    plain = with_precision(model, Precision())
    assert torch.equal(dense_logits(model, ROWS[0], EvictionConfig()), before)
    assert torch.equal(dense_logits(plain, ROWS[0], EvictionConfig()), before)
    assert (dense_logits(fp8, ROWS[0], EvictionConfig()) - before).abs().max() > 1e-4  # fp8 storage acts
    keys = torch.randn(1, 2, 3, 32)
    assert [s.kind for s in kv_storage(model)] == ["compute"] * 4  # a model without storage: as computed
    assert kv_storage(model)[0].keys(keys) is keys
    assert [s.kind for s in kv_storage(fp8)] == ["fp8_e4m3"] * 4
    with pytest.raises(ValueError, match="calibrated scales"):
        with_precision(model, PRECISION_PRESETS["kv_fp8"])
    with pytest.raises(TypeError, match="HF module"):
        with_precision(to_bridge(model), Precision(kv="int8"))
    with pytest.raises(ValueError, match="kv must be one of"):
        Precision(kv="fp4")


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("preset", sorted(PRECISION_PRESETS))
def test_eviction_decoding_equals_masked_forward_at_every_precision(preset, model_name):
    """Decoding a compacted cache and one masked forward agree to far less than precision moves the logits:
    they differ only where float32 noise flips a rounding of the stored values (or of bf16/fp16 sums)."""
    model, _ = MODELS[model_name]
    precision = PRECISION_PRESETS[preset]
    run_model = with_precision(model, precision, calibrate(model, ROWS, precision))
    for eviction in (EvictionConfig(), EvictionConfig(restart=True), EvictionConfig(keep_last_n_blocks=1)):
        decoded = teacher_force(run_model, TOKENIZER, ROWS, eviction).logits.float()
        for b, ids in enumerate(ROWS):
            masked = dense_logits(run_model, ids, eviction, precision.dtype)
            moved = (masked - dense_logits(model, ids, eviction)).abs().max()  # what precision itself does
            assert (decoded[b, :len(ids)] - masked).abs().max() <= max(1e-4, float(moved)), (preset, eviction, b)


@pytest.mark.parametrize("preset", ["kv_fp8_head", "kv_int4", "bf16_kv_fp8"])
def test_captured_kv_is_what_the_decoder_cache_stores(preset):
    from leakage.analysis.selfcheck import capture_rows

    model, _ = MODELS["tiny"]
    precision = PRECISION_PRESETS[preset]
    run_model = with_precision(model, precision, calibrate(model, ROWS, precision))
    [row] = capture_rows(run_model, TOKENIZER, ROWS, precision)  # every block part, every layer, both rows
    assert row["passed"], row  # equal but where float32 noise flips a rounding: one step of the format
    captured = capture(run_model, TOKENIZER, ROWS, EvictionConfig(), ["memento@0", "summary_end@1"])
    raw = capture(with_precision(model, Precision(compute=precision.compute)), TOKENIZER, ROWS, EvictionConfig(),
                  ["memento@0", "summary_end@1"])  # the same compute dtype, keys and values stored as computed
    for site in captured.sites:
        keys = captured.keys[site].transpose(0, 1)  # (L, B, kv_heads, P, d): one layer's cache tensor each
        # layer 0's keys are computed alike (from the embeddings): they differ by storage alone
        assert not torch.equal(captured.keys[site][:, 0], raw.keys[site][:, 0])
        for layer, storage in enumerate(kv_storage(run_model)):
            stored = storage.keys(keys[layer])
            if precision.kv in FP8:  # static fp8 scales are idempotent: the captured keys lie on the fp8 grid
                assert torch.equal(stored, keys[layer])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from leakage.engine.model import save_model

    path = tmp_path_factory.mktemp("precision") / "ckpt"
    save_model(*MODELS["tiny"], path)
    return str(path)


def test_the_precision_runner_scores_used_and_present_at_each_precision(checkpoint, tmp_path):
    from leakage.analysis.precision_channel import FILES, PrecisionSpec, run
    from leakage.analysis.probe import PROBE_PRESETS

    spec = PrecisionSpec(checkpoint, TaskConfig(task="passcode", n_blocks=3, passcode_block=1),
                         precisions=("float32", "kv_fp8_head"), n_eval=6, probe_traces=80, probe=PROBE_PRESETS["smoke"],
                         calibration=3, budgets=(20, 40))
    record = run(spec, tmp_path / "precision")
    rows = record.rows
    assert all((tmp_path / f"precision{suffix}").exists() for suffix in FILES)
    assert list(rows.precision.unique()) == ["float32", "kv_fp8_head"]
    n_layers = MODELS["tiny"][0].config.num_hidden_layers
    measures = ["answer_memento", "answer_restart", "restart_drop", "probe_masked_d1", "curve_masked_d1",
                "curve_masked_d1", "probe_delimiters", "curve_delimiters", "curve_delimiters", "patch_twin_cache",
                *[f"patch_layer{layer}" for layer in range(n_layers)]]
    for name in ("float32", "kv_fp8_head"):
        mine = rows[rows.precision == name].set_index("measure")
        assert list(mine.index) == measures
        drop = mine.loc["restart_drop"]
        difference = 100 * (mine.loc["answer_restart", "accuracy"] - mine.loc["answer_memento", "accuracy"])
        assert drop.points == pytest.approx(difference) and drop.ci95_low <= drop.points <= drop.ci95_high
        assert mine.loc["answer_memento", "total"] == 6 * 5  # five answer digits per example
        assert mine.loc["probe_masked_d1", "probe_budget"] == mine.loc["probe_masked_d1", "n_train"] > 0
        assert np.isfinite(mine.loc["probe_delimiters", "bits_leaked"])
        curve = mine.loc["curve_masked_d1"]  # the budget is what trains and early-stops: the rest of the split
        assert list(curve.budget) == [20, 40] and list(curve.n_train + curve.n_early_stop) == [20, 40]
        assert (curve.n_val == mine.loc["probe_masked_d1", "n_val"]).all()  # the same validation part
        twin = mine.loc["patch_twin_cache"]  # the first digit always differs: at least one unit per pair
        assert 6 <= twin.total <= 6 * 5 and twin.examples == 6 and twin.ci95_low <= twin.accuracy <= twin.ci95_high
        layers = mine.loc[[f"patch_layer{layer}" for layer in range(n_layers)]]
        assert list(layers.layer) == list(range(n_layers)) and layers.effect.notna().all()
    assert rows[rows.precision == "kv_fp8_head"].kv.iloc[0] == "fp8_e4m3"
    assert run(spec).rows.drop(columns="command", errors="ignore").equals(rows.drop(columns="command", errors="ignore"))


def test_the_twin_cache_measure_counts_the_twins_digits(checkpoint):
    """`patch_twin_cache` is the share of the answer digits where the passcodes differ whose prediction under the
    twin's whole retained cache is the twin's digit: recomputed here from the patched logits."""
    from leakage.analysis.patching import patched_logits
    from leakage.analysis.precision_channel import PrecisionSpec, patching_rows
    from leakage.analysis.twins import passcode_pairs, passcode_run
    from leakage.engine.model import load_checkpoint

    model, tokenizer = load_checkpoint(checkpoint)
    spec = PrecisionSpec(checkpoint, TaskConfig(task="passcode", n_blocks=3, passcode_block=1), n_eval=8)
    [twin, *_] = patching_rows(model, tokenizer, spec)
    examples, twins, digits = passcode_pairs(spec.task, tokenizer, spec.n_eval, spec.seed)
    run = passcode_run(model, tokenizer, examples, twins, digits, spec.eviction)
    differ = run.answer[..., 0] != run.answer[..., 1]
    follows = patched_logits(model, run, run.source).argmax(-1) == run.answer[..., 1]
    assert twin["accuracy"] == pytest.approx(float(follows[differ].float().mean()))
    assert twin["total"] == int(differ.sum()) and differ[:, 0].all()  # the first digit always differs


def test_selfcheck_passes_at_every_precision_and_fails_a_decoder_that_does_not_evict(capsys, monkeypatch):
    from leakage.analysis import selfcheck as module
    from leakage.cli import main

    for preset in ("float32", "bf16_kv_fp8", "kv_int4"):
        assert main(["selfcheck", "--precision", preset, "--n-traces", "2", "--device", "cpu"]) == 0, preset
        shown = capsys.readouterr().out
        assert f"checks passed at {preset} on cpu" in shown and "views" in shown and "patch" in shown
    with pytest.raises(RuntimeError, match="not-a-device"):
        module.SelfcheckSpec(device="not-a-device")
    rows = module.selfcheck(module.SelfcheckSpec(precision="kv_fp8", n_traces=2))
    assert {r["check"] for r in rows} == {"views", "decode", "capture", "patch"} and all(r["passed"] for r in rows)

    def never_evicts(model, tokenizer, ids, eviction, **kwargs):  # the broken variant: a vanilla cache
        return teacher_force(model, tokenizer, ids, EvictionConfig(keep_last_n_blocks=-1), **kwargs)

    monkeypatch.setattr(module, "teacher_force", never_evicts)
    broken = module.selfcheck(module.SelfcheckSpec(precision="kv_fp8", n_traces=2))
    assert not all(r["passed"] for r in broken if r["check"] == "decode")
    assert main(["selfcheck", "--precision", "kv_fp8", "--n-traces", "2"]) == 1


def test_every_analysis_runner_takes_the_precision_from_its_spec(checkpoint, tmp_path):
    import json

    from leakage.analysis import evaluation
    from leakage.cli import main
    from leakage.engine.precision import load_at_precision

    asked = []
    model, _ = load_at_precision(checkpoint, Precision(), lambda tok: asked.append(tok) or ROWS)
    assert not asked and not hasattr(model, "leakage_storage")  # float32 as computed: the checkpoint as loaded
    model, _ = load_at_precision(checkpoint, Precision(kv="fp8_e4m3", kv_scale="head"),
                                 lambda tok: asked.append(tok) or ROWS)
    assert len(asked) == 1 and model.config._attn_implementation == "leakage_stored_kv"
    task = TaskConfig(task="passcode", n_blocks=3, passcode_block=1)
    record = evaluation.run(evaluation.EvaluationSpec(checkpoint, task, n=4, precision=Precision(kv="int4")),
                            tmp_path / "eval")
    assert json.loads((tmp_path / "eval.json").read_text())["precision"] == {"compute": "float32", "kv": "int4",
                                                                              "kv_scale": "tensor"}
    assert record.results["memento/answer"]["total"] == 4 * 5
    assert main(["patch", checkpoint, "--blocks", "3", "--n", "4", "--reference", "40", "--bootstrap", "20",
                 "--kv", "fp8_e4m3", "--compute", "bfloat16",
                 "--out", str(tmp_path / "patch")]) == 0
    assert json.loads((tmp_path / "patch.json").read_text())["precision"]["compute"] == "bfloat16"
