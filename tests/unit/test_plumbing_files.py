"""The one atomic write: content, modes, no temp file left behind, concurrent writers."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from edgeai.plumbing import files
from edgeai.plumbing.files import atomic_path, atomic_write, sha256_file


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_bytes_and_text_and_replaces_the_whole_content(tmp_path: Path):
    target = tmp_path / "sub" / "f.json"  # the directory is created
    atomic_write(target, b"old content that is longer")
    assert target.read_bytes() == b"old content that is longer"
    atomic_write(target, "néw")
    assert target.read_text(encoding="utf-8") == "néw"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_a_new_file_gets_the_mode_open_would_give(tmp_path: Path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a", b"x")
        (tmp_path / "b").write_bytes(b"x")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "a") == mode_of(tmp_path / "b") == 0o640


def test_mode_is_exact_and_set_before_any_byte_is_written(tmp_path: Path, monkeypatch):
    target = tmp_path / "key"
    seen: list[int] = []
    real_write = os.write

    def spy(fd: int, data: bytes | memoryview) -> int:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(files.os, "write", spy)
    old = os.umask(0o077)  # the umask does not narrow an explicit mode
    try:
        atomic_write(target, b"secret", mode=0o600)
        atomic_write(tmp_path / "cert", b"public", mode=0o644)
    finally:
        os.umask(old)
    assert seen == [0o600, 0o644]
    assert mode_of(target) == 0o600
    assert mode_of(tmp_path / "cert") == 0o644


def test_an_explicit_mode_overrides_the_replaced_file(tmp_path: Path):
    target = tmp_path / "key"
    target.write_bytes(b"old")
    target.chmod(0o644)
    atomic_write(target, b"new", mode=0o600)
    assert mode_of(target) == 0o600


def test_a_replaced_file_keeps_its_mode(tmp_path: Path):
    target = tmp_path / "passwd"
    target.write_bytes(b"old")
    target.chmod(0o640)
    atomic_write(target, b"new")
    assert mode_of(target) == 0o640
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("durable", [True, False])
def test_durable_fsyncs_the_file_and_the_directory(tmp_path: Path, monkeypatch, durable: bool):
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", spy)
    atomic_write(tmp_path / "f", b"x", durable=durable)
    with atomic_path(tmp_path / "g", durable=durable) as tmp:
        tmp.write_bytes(b"y")
    assert synced == (["file", "dir", "file", "dir"] if durable else [])


def test_no_temp_file_is_left_after_an_exception(tmp_path: Path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def fail(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "write", fail)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_failed_rename_leaves_no_temp_file(tmp_path: Path):
    target = tmp_path / "d"
    (target / "inside").mkdir(parents=True)  # a non-empty directory cannot be replaced
    with pytest.raises(IsADirectoryError):
        atomic_write(target, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_atomic_path_commits_on_success_and_cleans_up_on_error(tmp_path: Path):
    target = tmp_path / "model.onnx"
    with atomic_path(target, mode=0o644) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.suffix == ".onnx"  # tools that pick a format by extension see the right one
        assert mode_of(tmp) == 0o644
        tmp.write_bytes(b"v1")
    assert target.read_bytes() == b"v1"

    def export_fails() -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("exporter failed")

    with pytest.raises(RuntimeError, match="exporter failed"):
        export_fails()
    assert target.read_bytes() == b"v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_concurrent_writers_use_distinct_temp_files_and_never_tear(tmp_path: Path, monkeypatch):
    target = tmp_path / "state.json"
    temps: list[Path] = []
    real_replace = Path.replace
    lock = threading.Lock()

    def record(self: Path, dest: Path) -> Path:
        with lock:
            temps.append(self)
        return real_replace(self, dest)

    monkeypatch.setattr(Path, "replace", record)
    payloads = [bytes([65 + i]) * 200_000 for i in range(8)]
    barrier = threading.Barrier(len(payloads))
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                atomic_write(target, data, durable=False)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(temps) == len(set(temps)) == 40
    assert all(t.name.startswith(".state.json.") and t.name.endswith(".tmp") for t in temps)
    assert target.read_bytes() in payloads  # one writer's whole file
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_sha256_file(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
