import os

import pytest

from vocabseg.files import atomic_write


def test_bytes_str_and_callable(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "b.txt", "héllo\n")
    atomic_write(tmp_path / "c.bin", lambda f: f.write(b"abc"))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "héllo\n".encode()
    assert (tmp_path / "c.bin").read_bytes() == b"abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.bin"]  # no temp file left


def test_replaces_and_returns_path(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("old")
    assert atomic_write(str(path), "new") == path
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["x.json"]


def test_failing_writer_keeps_old_file_and_removes_temp(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        assert os.path.basename(f.name).startswith(f".x.pt.tmp{os.getpid()}.")   # one per writer
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.pt"]


def test_creates_parent_folder(tmp_path):
    path = tmp_path / "a" / "b" / "c.txt"
    atomic_write(path, "x")
    assert path.read_text() == "x"
