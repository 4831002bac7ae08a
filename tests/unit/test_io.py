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


def test_existing_file_keeps_its_mode_and_read_only_files_are_refused(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    os.chmod(path, 0o600)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError, match="read-only"):
        atomic_write_text(path, "newer")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o444
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic_write_text(tmp_path, "x")


def test_symlinks_are_followed_not_replaced(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_non_regular_files_are_written_in_place(tmp_path):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    atomic_write_text(fifo, "through the pipe")
    reader.join(timeout=10)
    assert received == ["through the pipe"]
    assert stat.S_ISFIFO(fifo.stat().st_mode), "the FIFO was replaced by a regular file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_invalid_utf8_is_located(tmp_path):
    from leakage.io import read_text

    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(ValueError, match=r"data.jsonl, line 2: not UTF-8"):
        read_text(path)
