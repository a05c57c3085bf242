"""Model store: state transitions, replay refusal and crash recovery, in temporary dirs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgeai.artifacts import ModelStore, StoreError, UpdateRejected
from edgeai.artifacts.store import STATE


def make_bundle(path: Path, tag: str) -> Path:
    """A bundle-shaped directory (no real model needed by the store)."""
    path.mkdir(parents=True)
    files = {"model.onnx": f"model {tag}".encode(), "golden.npz": f"golden {tag}".encode()}
    for name, data in files.items():
        (path / name).write_bytes(data)
    manifest = {
        "model": {"name": "m", "version": tag},
        "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()},
    }
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path


@pytest.fixture
def bundles(tmp_path: Path) -> dict[int, Path]:
    return {r: make_bundle(tmp_path / f"src{r}", f"v{r}") for r in (1, 2, 3)}


def test_stage_commit_swaps_slots_and_keeps_previous(tmp_path: Path, bundles: dict[int, Path]):
    store = ModelStore(tmp_path / "store")
    assert store.recover() is None
    first = store.commit(store.stage(bundles[1], 1))
    assert (first.slot, first.release, first.version) == ("a", 1, "v1")
    second = store.commit(store.stage(bundles[2], 2))
    assert (second.slot, second.release) == ("b", 2)
    assert (second.path / "model.onnx").read_bytes() == b"model v2"
    prev = store.previous()
    assert prev is not None
    assert prev.release == 1
    reopened = ModelStore(tmp_path / "store")  # the state survives a restart
    assert reopened.active() == second


def test_replay_and_known_bad_are_refused(tmp_path: Path, bundles: dict[int, Path]):
    store = ModelStore(tmp_path / "store")
    store.commit(store.stage(bundles[2], 2))
    for release in (1, 2):
        with pytest.raises(UpdateRejected) as info:
            store.stage(bundles[1], release)
        assert info.value.reason == "replay"
    store.mark_bad(3, "gate: too slow")
    with pytest.raises(UpdateRejected) as info:
        store.stage(bundles[3], 3)
    assert info.value.reason == "known_bad"
    assert ModelStore(tmp_path / "store").is_bad(3) == "gate: too slow"


def test_a_slot_cannot_be_committed_twice(tmp_path: Path, bundles: dict[int, Path]):
    store = ModelStore(tmp_path / "store")
    store.commit(store.stage(bundles[1], 1))
    staged = store.stage(bundles[3], 3)
    # Committing the same slot twice would make it both active and previous.
    store.commit(staged)
    with pytest.raises(StoreError):
        store.commit(staged)


def test_stage_rejects_a_tampered_source_and_leaves_state_alone(
    tmp_path: Path, bundles: dict[int, Path]
):
    store = ModelStore(tmp_path / "store")
    active = store.commit(store.stage(bundles[1], 1))
    (bundles[2] / "model.onnx").write_bytes(b"evil")
    with pytest.raises(UpdateRejected) as info:
        store.stage(bundles[2], 2)
    assert info.value.reason == "tampered"
    assert store.active() == active
    assert not list((tmp_path / "store" / "slots").glob(".*"))


def test_rollback_and_discard(tmp_path: Path, bundles: dict[int, Path]):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(StoreError):
        store.rollback()
    store.commit(store.stage(bundles[1], 1))
    store.commit(store.stage(bundles[2], 2))
    back = store.rollback()
    assert (back.release, back.slot) == (1, "a")
    with pytest.raises(StoreError):
        store.discard(back.path)
    staged = store.stage(bundles[3], 3)  # overwrites slot b: no previous kept any more
    assert store.previous() is None
    store.discard(staged)
    assert not staged.exists()


def test_staging_over_the_previous_slot_forgets_it_first(tmp_path: Path, bundles: dict[int, Path]):
    store = ModelStore(tmp_path / "store")
    store.commit(store.stage(bundles[1], 1))
    store.commit(store.stage(bundles[2], 2))
    store.stage(bundles[3], 3)
    state = json.loads((tmp_path / "store" / STATE).read_text(encoding="utf-8"))
    assert state["previous"] is None
    assert state["active"]["release"] == 2


def test_recover_cleans_leftovers(tmp_path: Path, bundles: dict[int, Path]):
    store = ModelStore(tmp_path / "store")
    store.commit(store.stage(bundles[1], 1))
    root = tmp_path / "store"
    (root / "slots" / ".b.staging").mkdir()
    (root / "slots" / ".b.staging" / "model.onnx").write_bytes(b"half")
    (root / f".{STATE}.999.tmp").write_text("{", encoding="utf-8")
    (root / "scratch" / "dl").mkdir(parents=True)
    active = ModelStore(root).recover()
    assert active is not None
    assert active.release == 1
    assert not (root / "slots" / ".b.staging").exists()
    assert not (root / f".{STATE}.999.tmp").exists()
    assert not (root / "scratch").exists()


def test_recover_falls_back_when_the_active_slot_is_damaged(
    tmp_path: Path, bundles: dict[int, Path]
):
    root = tmp_path / "store"
    store = ModelStore(root)
    store.commit(store.stage(bundles[1], 1))
    new = store.commit(store.stage(bundles[2], 2))
    (new.path / "model.onnx").write_bytes(b"bit rot")
    active = ModelStore(root).recover()
    assert active is not None
    assert (active.release, active.slot) == (1, "a")
    assert (active.path / "model.onnx").read_bytes() == b"model v1"


def test_recover_reports_nothing_when_no_slot_is_intact(tmp_path: Path, bundles: dict[int, Path]):
    root = tmp_path / "store"
    store = ModelStore(root)
    store.commit(store.stage(bundles[1], 1))
    new = store.commit(store.stage(bundles[2], 2))
    (new.path / "golden.npz").unlink()
    (root / "slots" / "a" / "manifest.json").write_text("{}", encoding="utf-8")
    fresh = ModelStore(root)
    assert fresh.recover() is None
    assert fresh.active() is None


def test_a_damaged_state_file_is_a_clear_error(tmp_path: Path):
    root = tmp_path / "store"
    root.mkdir()
    (root / STATE).write_text('{"active": 3}', encoding="utf-8")
    with pytest.raises(StoreError, match="remove it"):
        ModelStore(root)
