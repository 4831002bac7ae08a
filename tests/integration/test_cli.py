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
    assert memento_peak == 6 + 10 + 11 - 5  # at block 1's summary_end, block 0's 5 reasoning tokens are gone
    assert png.stat().st_size > 10_000


def test_decode_generates_from_a_checkpoint(capsys, tmp_path, tiny):
    from leakage.model import save_model

    save_model(*tiny, tmp_path / "ckpt")
    assert main(["decode", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "sum <think>",
                 "--max-new-tokens", "5", "--temperature", "1.0", "--seed", "1"]) == 0
    assert "KV cache" in capsys.readouterr().out
