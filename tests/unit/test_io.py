"""Atomic file writing: all or nothing, with ordinary permissions."""

import os
import stat

import pytest

from leakage.io import atomic_file, atomic_write_text


def test_success_replaces_the_file_with_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    old = os.umask(0o022)
    try:
        atomic_write_text(path, "first")
        atomic_write_text(path, "second")
    finally:
        os.umask(old)
    assert path.read_text() == "second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.png"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_file(path, suffix=path.suffix) as tmp:
            assert tmp.suffix == ".png" and tmp.parent == tmp_path
            tmp.write_text("partial")
            raise RuntimeError("half-way")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
