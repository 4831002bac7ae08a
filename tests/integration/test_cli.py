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
