"""The analysis verbs and the main job under the cases a new user tried (docs/reliability.md, "The analysis
verbs and the main job"): no stale result, outputs that never touch inputs, no silent NaN, validation before
work, full disks and damaged checkpoints named."""

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from leakage import provenance
from leakage.cli import main
from leakage.engine.model import save_model
from leakage.io import atomic_write_json
from leakage.pipeline.llm import ChatClient, LLMConfig, LLMError
from leakage.training.tasks import TaskConfig
from leakage.training.train import RunConfig, TrainingDiverged, train, train_preset
from tests.integration.conftest import REPRODUCE
from tests.integration.test_reliability import fails_cleanly

SMOKE = ["--preset", "smoke"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Smoke-trained 3-block models of the passcode and the digits task: (passcode final, digits final)."""
    root = tmp_path_factory.mktemp("models")
    finals = []
    for task in ("passcode", "digits"):
        run = RunConfig(task=TaskConfig(task=task, n_blocks=3), preset=train_preset("smoke"))
        finals.append(str(train(run, root / task)))
    return finals


def edited(monkeypatch, module: str) -> None:
    """Make `module`'s source read as edited (a comment appended), as a code change would."""
    path = provenance._path(module)
    read = provenance._read
    monkeypatch.setattr(provenance, "_read", lambda p: read(p) + (b"\n# edited\n" if p == path else b""))


# -- stale results ---------------------------------------------------------------------------------------------

def test_a_code_change_reruns_exactly_the_stages_whose_code_changed(reproduced, capsys, monkeypatch):
    edited(monkeypatch, "leakage.analysis.probing")
    assert main(REPRODUCE) == 0
    printed = capsys.readouterr().out
    assert "[probe] running" in printed and printed.count("skipped") == 6, printed
    edited(monkeypatch, "leakage.training.train")  # training code: the model is retrained (same seed, same
    assert main(REPRODUCE) == 0  # weights); stages whose code does not import it are not rerun
    printed = capsys.readouterr().out
    assert "[train] running" in printed and "[evaluate] done before" in printed


def test_resume_after_a_code_change_is_refused_naming_the_difference(tmp_path, capsys, monkeypatch):
    argv = ["train", *SMOKE, "--blocks", "3", "--stages", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    edited(monkeypatch, "leakage.engine.decode")  # the decoder scores checkpoints during training
    fails_cleanly(capsys, [*argv, "--resume"], r"differs in \['code.sources_sha256'\].*--overwrite")
    assert main([*argv, "--overwrite"]) == 0


def test_a_swapped_run_folder_is_retrained_not_reused(reproduced, capsys):
    folder = reproduced / "runs" / "reproduce-passcode3-smoke-seed0"
    assert folder.is_dir()  # the seed is in the run folder's name
    digits = RunConfig(task=TaskConfig(task="digits", n_blocks=3), preset=train_preset("smoke"))
    train(digits, folder, overwrite=True)  # another task's model in the main job's folder
    capsys.readouterr()
    assert main(REPRODUCE) == 0
    assert "[train] running" in capsys.readouterr().out
    assert json.loads((folder / "config.json").read_text())["task"]["task"] == "passcode"
    capsys.readouterr()  # the same folder named relative or absolute is the same folder
    assert main(["reproduce", *SMOKE, "--out", "out", "--runs-dir", str((reproduced / "runs").resolve())]) == 0
    assert "running" not in capsys.readouterr().out


def test_an_output_folder_belongs_to_one_reproduce(reproduced, capsys):
    out = reproduced / "out"
    records = {p.name: p.read_text() for p in (out / "stages").glob("*.json")}
    fails_cleanly(capsys, [*REPRODUCE, "--seed", "1"], r"reproduce with other settings \(differs in \['seed'\]")
    assert {p.name: p.read_text() for p in (out / "stages").glob("*.json")} == records  # untouched
    assert main([*REPRODUCE, "--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "reproduce.json").read_text())["seed"] == 1
    assert (reproduced / "runs" / "reproduce-passcode3-smoke-seed1" / "final").is_dir()
    (reproduced / "other").mkdir()
    (reproduced / "other" / "notes.txt").write_text("mine")
    fails_cleanly(capsys, ["reproduce", *SMOKE, "--out", str(reproduced / "other")], "no `leakage reproduce` wrote")


# -- outputs never touch inputs ------------------------------------------------------------------------------

def test_outputs_never_land_on_inputs_or_inside_checkpoints(tmp_path, capsys, models):
    passcode, _ = models
    config = Path(passcode) / "config.json"
    before = config.read_bytes()
    fails_cleanly(capsys, ["eval", "--checkpoint", passcode, "--task", "passcode", "--blocks", "3", "--n", "2",
                           "--out", str(config)], "lies inside")
    assert config.read_bytes() == before
    traces = tmp_path / "t.json"
    shutil.copy(Path(__file__).parents[1] / "fixtures" / "memento_example_code.json", traces)
    original = traces.read_bytes()
    fails_cleanly(capsys, ["probe", passcode, "--traces", str(traces), "--n", "20", "--out", str(traces)],
                  "would overwrite the input")
    assert traces.read_bytes() == original
    (tmp_path / "dir.json").mkdir()
    fails_cleanly(capsys, ["restart", passcode, "--task", "passcode", "--blocks", "3", "--n", "2",
                           "--out", str(tmp_path / "dir.json")], "is a directory")
    assert main(["patch", passcode, "--blocks", "3", "--n", "4", "--bootstrap", "10",
                 "--out", str(tmp_path / "res" / "p.json")]) == 0  # CSV and record are two files
    assert (tmp_path / "res" / "p.csv").read_text().startswith("experiment,") and \
        json.loads((tmp_path / "res" / "p.json").read_text())["analysis"] == "patch_maps"


# -- no silent NaN ----------------------------------------------------------------------------------------------

def test_non_finite_weights_and_results_are_errors(tmp_path, capsys, models):
    from leakage.engine.model import load_model

    model, tokenizer = load_model(models[0])
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    save_model(model, tokenizer, tmp_path / "nan")
    nan = str(tmp_path / "nan")
    for argv in (["eval", "--checkpoint", nan, "--task", "passcode"], ["consistency", nan, "--task", "passcode"],
                 ["restart", nan, "--task", "passcode"], ["patch", nan], ["probe", nan, "--task", "passcode"]):
        fails_cleanly(capsys, [*argv, "--blocks", "3", "--n", "20"], r"layers\.1\.mlp\.down_proj\.weight holds 1 NaN")
    assert not list(tmp_path.glob("*.csv"))
    with pytest.raises(ValueError, match=r"not written: NaN or infinite numbers at /a/1"):
        atomic_write_json(tmp_path / "x.json", {"a": [0.5, float("nan")]})
    assert not (tmp_path / "x.json").exists()


def test_a_diverging_loss_stops_training_naming_stage_and_step(tmp_path):
    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    run = RunConfig(task=TaskConfig(task="digits", n_blocks=3), preset=train_preset("smoke"), stages=(1,))
    with pytest.raises(TrainingDiverged, match=r"stage 1, step 3: loss = nan: training diverged"):
        train(run, tmp_path / "run", callbacks=[Poison()])
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(v, (int, float, str)) for line in lines for v in line.values())  # strict JSON lines


# -- validate before working ----------------------------------------------------------------------------------

def test_sizes_strengths_blocks_and_tasks_are_checked_before_any_work(tmp_path, capsys, models):
    passcode, digits = models
    common = ["--blocks", "3"]
    fails_cleanly(capsys, ["eval", "--checkpoint", passcode, *common, "--task", "passcode", "--n", "0"],
                  "n must be at least 1")
    fails_cleanly(capsys, ["restart", passcode, *common, "--task", "passcode", "--n", "-3"], "n must be at least 1")
    fails_cleanly(capsys, ["probe", passcode, *common, "--task", "passcode", "--n", "3"], "n must be at least 20")
    fails_cleanly(capsys, ["probe", passcode, *common, "--task", "passcode", "--passcode-block", "2"],
                  "passcode_block 2 leaves no block after it")
    fails_cleanly(capsys, ["ablate", passcode, *common, "--bootstrap", "0"], "bootstrap must be at least 10")
    fails_cleanly(capsys, ["erase", passcode, *common, "--strengths", "0,2.5,-1"], r"strengths must lie in \[0, 1\]")
    fails_cleanly(capsys, ["patch", passcode, *common, "--passcode-block", "2", "--keep-last-n-blocks", "1"],
                  "passcode_block 2 is never evicted before the answer")
    fails_cleanly(capsys, ["patch", passcode, *common, "--n", "0"], "n must be at least 2 pairs")
    fails_cleanly(capsys, ["patch", digits, *common, "--n", "4"], r"trained on the 'digits' task, not 'passcode'")
    fails_cleanly(capsys, ["eval", "--checkpoint", digits, *common, "--task", "passcode"], "pass --force")
    assert main(["eval", "--checkpoint", digits, *common, "--task", "passcode", "--n", "1", "--force"]) == 0
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    fails_cleanly(capsys, ["probe", passcode, "--traces", str(empty), "--n", "20"], "no records")
    fails_cleanly(capsys, ["probe", passcode, "--traces", str(tmp_path / "missing.jsonl")], "no such file")


def test_rl_validates_before_it_writes_its_run_folder(tmp_path, capsys, models):
    sft = str(Path(models[0]).parent)
    out = tmp_path / "rl"
    base = ["rl", "--task", "passcode", "--from", sft, "--out", str(out), "--preset", "smoke", "--no-analysis"]
    fails_cleanly(capsys, [*base, "--max-block-tokens", "5"], "would cut block")
    assert not (out / "config.json").exists()
    assert main(base) == 0  # the corrected retry is not refused as "a different run"


def test_a_password_in_the_llm_url_never_appears_in_errors():
    client = ChatClient(LLMConfig(base_url="http://user:hunter2@127.0.0.1:9/v1", model="m", max_retries=0),
                        sleep=lambda _: None)
    with pytest.raises(LLMError) as caught:
        client.chat([{"role": "user", "content": "hi"}])
    assert "hunter2" not in str(caught.value) and "user:***@" in str(caught.value)


# -- full disks and damaged checkpoints ------------------------------------------------------------------------

def test_damaged_weights_are_named(tmp_path, capsys, models):
    for damage, cut in (("truncated", lambda b: b[:len(b) // 2]), ("empty", lambda b: b"")):
        broken = tmp_path / damage
        shutil.copytree(models[0], broken)
        weights = broken / "model.safetensors"
        weights.write_bytes(cut(weights.read_bytes()))
        fails_cleanly(capsys, ["eval", "--checkpoint", str(broken), "--task", "passcode", "--blocks", "3"],
                      rf"{damage}/model.safetensors: damaged or truncated weights")


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_a_full_disk_is_named_and_an_incomplete_checkpoint_is_skipped_on_resume(tmp_path, monkeypatch):
    run = RunConfig(task=TaskConfig(task="digits", n_blocks=3), preset=train_preset("smoke"), stages=(1,), seed=2)
    straight = train(run, tmp_path / "straight")
    from leakage.training import train as training

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(training.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(OSError, match=r"no space left on the device holding .*run.*bytes free") as caught:
        train(run, tmp_path / "run")
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()

    disk = {"full": False}

    def full(*args, **kwargs):  # what torch says when the disk fills mid-checkpoint
        disk["full"] = True
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 3456 vs 3344")

    monkeypatch.setattr(training.shutil, "disk_usage", lambda path: usage._replace(free=0) if disk["full"] else usage)
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="no space left on the device holding .*unexpected pos"):
        train(run, tmp_path / "run2")
    monkeypatch.undo()

    folder = tmp_path / "resumed"
    from leakage.training.train import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(run, folder, callbacks=[StopAt(4)])  # checkpoint-3 saved, stopped at step 4
    partial = folder / "stage1" / "checkpoint-4"  # what a full disk leaves: part of a checkpoint
    shutil.copytree(folder / "stage1" / "checkpoint-3", partial)
    (partial / "optimizer.pt").unlink()
    (partial / "model.safetensors").write_bytes(b"")
    final = train(run, folder, resume=True)
    assert (final / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
    steps = [(r["step"], tuple(sorted(r))) for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]
    assert len(steps) == len(set(steps)), "a resumed run logs no step twice"
