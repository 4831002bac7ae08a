from dataclasses import replace

import pytest

from leakage.cli import main


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_demo_shows_agreeing_views(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "memento mask" in out
    bridge_line = next(line for line in out.splitlines() if "HF vs TransformerLens bridge" in line)
    assert float(bridge_line.split(":")[-1]) < 1e-5


def test_decode_teacher_forced_prints_segments_kv_and_plots(capsys, tmp_path):
    response = ("<|block_start|> 1 2 3 = 6 <|block_end|> <|summary_start|> 6 <|summary_end|> "
                "<|block_start|> 4 5 = 1 5 <|block_end|> <|summary_start|> 1 5 <|summary_end|> </think> 1 5")
    png = tmp_path / "saw.png"
    assert main(["decode", "--prompt", "what is the sum ? <think>", "--teacher-force", response,
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "[   block 0] 1 2 3 = 6" in out and "[ memento 1] 1 5" in out and "[    answer] 1 5" in out
    memento_peak = int(out.split("memento: peak ")[1].split()[0])
    vanilla_peak = int(out.split("vanilla: peak ")[1].split()[0])
    assert vanilla_peak == 6 + 10 + 11 + 3  # prompt, block 0 + memento, block 1 + memento, </think> + answer
    # the largest cache is at block 1's last memento token: block 0's 5 reasoning tokens are gone, and block 1
    # leaves before its own <|summary_end|> is fed (the engine's timing)
    assert memento_peak == 6 + 10 + 10 - 5
    assert png.stat().st_size > 10_000


def test_decode_generates_from_a_checkpoint(capsys, tmp_path, tiny):
    from leakage.engine.model import save_model

    save_model(*tiny, tmp_path / "ckpt")
    assert main(["decode", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "sum <think>",
                 "--max-new-tokens", "5", "--temperature", "1.0", "--seed", "1"]) == 0
    assert "KV cache" in capsys.readouterr().out


def test_consistency_reports_both_checks(capsys, tmp_path, tiny):
    import json

    from leakage.engine.model import save_model

    save_model(*tiny, tmp_path / "ckpt")
    out = tmp_path / "consistency.json"
    assert main(["consistency", str(tmp_path / "ckpt"), "--n", "3", "--blocks", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "summary_end" in printed and "eviction decoding vs masked forward (engine)" in printed
    report = json.loads(out.read_text())
    assert report["command"].startswith("leakage consistency ")
    timing = report["timing"]["max_abs_logit_diff"]
    # rows before the first <|summary_end|> see the same keys under both timings; the summary_end rows do not
    assert timing["prompt"]["max"] == 0 and timing["block_start"]["positions"] == 9
    assert timing["summary_end"]["max"] > 1e-4
    assert report["timing"]["max_abs_key_diff"]["interior"]["max"] > 0  # later blocks see different KV history
    for gaps in report["engine"].values():  # eviction decoding computes what the masked forward computes
        assert gaps["max_abs_logit_diff_decoder_vs_masked_forward"] < 1e-4
        assert gaps["max_abs_kv_diff_decoder_vs_masked_forward"] < 1e-4


@pytest.mark.parametrize("command", ["patch", "ablate", "erase"])
def test_causal_commands_write_csv_config_and_figure(capsys, tmp_path, tiny, command):
    import json

    import pandas as pd

    from leakage.engine.model import save_model

    save_model(*tiny, tmp_path / "ckpt")
    out = tmp_path / f"{command}.csv"
    assert main([command, str(tmp_path / "ckpt"), "--n", "6", "--reference", "40", "--strengths", "0,1",
                 "--bootstrap", "20", "--blocks", "3", "--passcode-block", "0", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert len(frame) > 0 and frame.command.str.startswith(f"leakage {command} ").all()
    config = json.loads(out.with_suffix(".json").read_text())
    assert config["task"]["task"] == "passcode" and config["experiment"]["strengths"] == [0.0, 1.0]
    assert out.with_suffix(".png").stat().st_size > 0


def test_das_writes_every_part_on_a_tiny_model(capsys, tmp_path, tiny):
    """`leakage das` end to end; --min-effect -1 searches every cell of the random model, so the placebos,
    grafts and angles run too; at a position-kind site (the memento tokens), the shuffled-positions placebo
    never lands on a position computed with the passcode block in view (one would carry the channel)."""
    import json

    import pandas as pd

    from leakage.engine.model import save_model
    from leakage.training.tasks import TaskConfig, make_example

    save_model(*tiny, tmp_path / "ckpt")
    out = tmp_path / "das.csv"
    assert main(["das", str(tmp_path / "ckpt"), "--n", "6", "--n-train", "40", "--steps", "2", "--ks", "1,2",
                 "--min-effect", "-1", "--random-subspaces", "20", "--bootstrap", "20", "--blocks", "3",
                 "--passcode-block", "1", "--sites", "memento", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert set(frame.experiment) == {"reference", "das", "placebo", "graft", "angle"}
    das = frame[frame.experiment == "das"]
    assert len(das) == 3 * len(das[das.whole_cell.astype(bool)])  # every cell: whole, k=1, k=2
    assert set(das.site) == {"memento"}
    task = TaskConfig(task="passcode", n_blocks=3, passcode_block=1)  # what the flags above give
    passcode_start = make_example(task, tiny[1], 0, 0, "val").passcode_positions[0]  # leaked: held from here on
    shuffled = frame[(frame.experiment == "placebo") & (frame.intervention == "shuffled_positions")]
    assert len(shuffled) and max(int(p) for p in shuffled.positions.iloc[0].split()) < passcode_start
    config = json.loads(out.with_suffix(".json").read_text())
    assert config["das"]["ks"] == [1, 2] and {"top_cell", "placebo", "graft", "cells_searched"} <= set(config)
    assert out.with_suffix(".png").stat().st_size > 0


def test_erasers_write_one_row_per_eraser_on_a_tiny_model(tmp_path, tiny):
    """The `leakage erasers` runner end to end (every cell searched, so the DAS eraser has subspaces to ablate;
    a linear probe on standardised features keeps it to seconds): the clean row removes nothing, and every
    eraser has its answer, running sums and probe."""
    import pandas as pd

    from leakage.analysis import erasers
    from leakage.analysis.das import DasConfig
    from leakage.analysis.probe import ProbeConfig
    from leakage.analysis.twins import CausalExperiment
    from leakage.engine.model import save_model
    from leakage.training.tasks import TaskConfig

    save_model(*tiny, tmp_path / "ckpt")
    spec = erasers.ErasersSpec(str(tmp_path / "ckpt"), TaskConfig(task="passcode", n_blocks=3, passcode_block=0),
                               experiment=CausalExperiment(n=6, reference=40, bootstrap=20),
                               das=DasConfig(ks=(1,), n_train=40, steps=2, min_effect=-1),
                               replacement=erasers.ReplacementConfig(replacement_steps=2))
    out = tmp_path / "erasers"
    erasers.run(spec, out, probe=ProbeConfig(kind="linear", whiten=False, max_epochs=3))
    frame = pd.read_csv(out.with_suffix(".csv"))
    curve = frame[frame.experiment == "eraser"].set_index("eraser")
    assert list(curve.index) == list(erasers.ERASERS)
    assert curve.loc["none", ["answer_removed", "sums_lost", "bits_removed"]].abs().max() == 0
    assert curve[["answer_accuracy", "sums_accuracy", "probe_accuracy", "probe_bits"]].notna().all().all()
    assert (curve.loc["das", "das_cells"] == 16) and out.with_suffix(".png").stat().st_size > 0
    assert curve.twin_gap.notna().sum() == 1 and curve.loc["learned", "twin_gap"] >= 0
    only = erasers.run(replace(spec, erasers=("none", "learned")), tmp_path / "two",
                       probe=ProbeConfig(kind="linear", whiten=False, max_epochs=3))
    assert set(only.rows.experiment) == {"eraser"}  # no DAS search without the das eraser
