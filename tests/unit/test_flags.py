"""CLI flags derived from config dataclasses: every field, its type, default and help, back to the dataclass."""

import argparse

import pytest

from leakage.config import EvictionConfig
from leakage.flags import add_flags, from_flags
from leakage.training.tasks import TaskConfig


def parse(cls, argv, **kwargs):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_flags(parser, cls, **kwargs)
    return parser, parser.parse_args(argv)


def test_defaults_round_trip_to_the_dataclass():
    for cls in (EvictionConfig, TaskConfig):
        _, args = parse(cls, [])
        assert from_flags(cls, args) == cls()


def test_types_booleans_and_optional_values():
    _, args = parse(EvictionConfig, ["--keep-last-n-blocks", "2", "--mask-delimiters", "--restart",
                                     "--max-block-tokens", "64", "--summary-end-sees-block"])
    assert from_flags(EvictionConfig, args) == EvictionConfig(keep_last_n_blocks=2, mask_delimiters=True, restart=True,
                                                              max_block_tokens=64, summary_end_sees_block=True)
    _, args = parse(TaskConfig, ["--passcode-block", "none", "--no-little-endian-sums", "--blocks", "4"],
                    rename={"n_blocks": "blocks"}, defaults={"short_block_rate": 0.8})
    assert from_flags(TaskConfig, args) == TaskConfig(passcode_block=None, little_endian_sums=False, n_blocks=4,
                                                      short_block_rate=0.8)


def test_help_comes_from_the_docstring_and_skip_removes_fields():
    parser, _ = parse(EvictionConfig, [], skip=("restart",))
    text = parser.format_help()
    assert "keep the N most recently completed blocks" in text and "--restart" not in text
    assert "--summary-end-sees-block" in text and "NOT the engine" in text


def test_bad_values_are_refused():
    parser, _ = parse(EvictionConfig, [])
    with pytest.raises(argparse.ArgumentError, match="int"):
        parser.parse_args(["--keep-last-n-blocks", "two"])
    _, args = parse(EvictionConfig, ["--keep-last-n-blocks", "-3"])
    with pytest.raises(ValueError, match="keep_last_n_blocks"):
        from_flags(EvictionConfig, args)


def test_nested_specs_take_their_parts_flags_and_the_enclosing_default():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Spec:
        """A runner's spec.

        checkpoint: the model.
        runs: run folders.
        n: examples.
        """

        checkpoint: str
        task: TaskConfig = TaskConfig(task="passcode", n_blocks=4)
        eviction: EvictionConfig = EvictionConfig()
        n: int = 8

    parser, args = parse(Spec, ["ckpt", "--blocks", "3", "--mask-delimiters"], rename={"task.n_blocks": "blocks"},
                         skip=("task.short_block_rate", "eviction.restart"))
    spec = from_flags(Spec, args)
    assert spec == Spec("ckpt", TaskConfig(task="passcode", n_blocks=3), EvictionConfig(mask_delimiters=True))
    assert "--restart" not in parser.format_help() and "the model" in parser.format_help()
    _, args = parse(Spec, ["--checkpoint", "c"], options=("checkpoint",))
    assert from_flags(Spec, args) == Spec("c")  # the enclosing default: passcode, 4 blocks
    with pytest.raises(argparse.ArgumentError):
        parse(Spec, ["c", "--n", "2"], skip=("task.short_block_rate",), rename={"task.passcode_block": "n"})
