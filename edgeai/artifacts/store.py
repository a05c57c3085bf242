"""Two-slot model store with a crash-safe swap.

Layout under ``root``::

    slots/a/, slots/b/   complete bundles (plus ``edgeai-slot.json``: release and version)
    state.json           which slot is active, the previous one, releases known to be bad
    scratch/             downloads in progress (wiped by :meth:`ModelStore.recover`)

A slot is filled under a hidden name and renamed into place only once every file matches
the manifest's sha256, and the active slot changes only by atomically replacing
``state.json`` (temp file, fsync, rename, fsync of the directory: the rename is the commit
point; see rename(2) and https://lwn.net/Articles/457667/). A SIGKILL at any moment
therefore leaves the state naming a complete slot: the old one or the new one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from edgeai.artifacts._bundle import MANIFEST, bundle_mismatches, model_version, read_manifest
from edgeai.artifacts.errors import StoreError, UpdateRejected
from edgeai.configfile import Frozen
from edgeai.plumbing.files import atomic_write, fsync_dir, fsync_file

log = logging.getLogger(__name__)

SlotName = Literal["a", "b"]
SLOTS: tuple[SlotName, SlotName] = ("a", "b")
SLOT_INFO = "edgeai-slot.json"
STATE = "state.json"


class SlotRecord(Frozen):
    """A committed slot: which one, and the release and model version it holds."""

    slot: SlotName
    release: int = Field(ge=0)
    version: str


class StoreState(Frozen):
    """The content of ``state.json``."""

    schema_version: Literal[1] = 1
    active: SlotRecord | None = None
    previous: SlotRecord | None = None
    bad: dict[int, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class ActiveModel:
    """The bundle to serve: its directory, release number and model version."""

    path: Path
    release: int
    version: str
    slot: SlotName


class ModelStore:
    """Two slots and a state file; see the module docstring for the layout and guarantees.

    Call :meth:`recover` once at start-up before trusting :meth:`active`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.slots_dir = root / "slots"
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        self._state = self._read_state()

    # -- reading -------------------------------------------------------------------------

    def _read_state(self) -> StoreState:
        path = self.root / STATE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return StoreState()
        except OSError as exc:
            raise StoreError(f"{path}: unreadable ({exc})") from exc
        try:
            return StoreState.model_validate_json(text)
        except ValidationError as exc:
            raise StoreError(
                f"{path}: not a model store state file ({exc.error_count()} error(s)); "
                "it is only ever replaced atomically, so the disk or another program "
                "damaged it: remove it to start with an empty store"
            ) from exc

    def _model(self, record: SlotRecord | None) -> ActiveModel | None:
        if record is None:
            return None
        return ActiveModel(
            self.slots_dir / record.slot, record.release, record.version, record.slot
        )

    def active(self) -> ActiveModel | None:
        """Return the model to serve, or None when nothing was ever committed."""
        return self._model(self._state.active)

    def previous(self) -> ActiveModel | None:
        """Return the model :meth:`rollback` would return to, if it is still kept."""
        return self._model(self._state.previous)

    def bad(self) -> dict[int, str]:
        """Return the releases marked bad on this device, with the reason."""
        return dict(self._state.bad)

    def is_bad(self, release: int) -> str | None:
        """Return why ``release`` was marked bad, or None."""
        return self._state.bad.get(release)

    def spare(self) -> SlotName:
        """Return the slot the next :meth:`stage` fills (the one not active)."""
        active = self._state.active
        return "b" if active is not None and active.slot == "a" else "a"

    # -- writing -------------------------------------------------------------------------

    def _write(self, state: StoreState) -> None:
        atomic_write(self.root / STATE, state.model_dump_json(indent=2).encode() + b"\n")
        self._state = state

    def _refuse(self, release: int, downgrade: bool) -> None:
        active = self._state.active
        older_allowed = downgrade and active is not None and release < active.release
        if active is not None and release <= active.release and not older_allowed:
            raise UpdateRejected(
                "replay", f"release {release} is not newer than the active {active.release}"
            )
        reason = self._state.bad.get(release)
        if reason is not None:
            raise UpdateRejected("known_bad", f"release {release} failed before: {reason}")

    def stage(self, bundle_src: Path, release: int, *, downgrade: bool = False) -> Path:
        """Copy a verified bundle into the spare slot and return the slot's directory.

        ``downgrade=True`` allows a release older than the active one: only for a signed
        revocation of the active release, never for an ordinary update.

        Raises
        ------
        UpdateRejected
            ``replay`` (release not newer than the active one), ``known_bad``, or
            ``tampered`` (a file differs from the manifest's sha256, at the source or
            after copying).
        """
        self._refuse(release, downgrade)
        problems = bundle_mismatches(bundle_src)
        if problems:
            raise UpdateRejected("tampered", f"{bundle_src}: {'; '.join(problems)}")
        manifest = read_manifest(bundle_src)
        spare = self.spare()
        previous = self._state.previous
        if previous is not None and previous.slot == spare:
            # The state must never name a slot while it is being overwritten.
            self._write(self._state.model_copy(update={"previous": None}))
        staging = self.slots_dir / f".{spare}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            for name in [MANIFEST, *manifest["files"]]:
                shutil.copyfile(bundle_src / name, staging / name)
                fsync_file(staging / name)
            info = {"release": release, "version": model_version(manifest)}
            (staging / SLOT_INFO).write_text(json.dumps(info) + "\n", encoding="utf-8")
            fsync_file(staging / SLOT_INFO)
            problems = bundle_mismatches(staging)
            if problems:
                raise UpdateRejected("tampered", f"copy in slot {spare}: {'; '.join(problems)}")
            fsync_dir(staging)
            target = self.slots_dir / spare
            shutil.rmtree(target, ignore_errors=True)
            staging.replace(target)
            fsync_dir(self.slots_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def _slot_record(self, slot: SlotName) -> SlotRecord | None:
        """Return what a slot holds if it is complete and intact, else None."""
        path = self.slots_dir / slot
        try:
            info = json.loads((path / SLOT_INFO).read_text(encoding="utf-8"))
            record = SlotRecord(slot=slot, release=info["release"], version=info["version"])
        except (OSError, ValueError, KeyError, TypeError, ValidationError):
            return None
        return None if bundle_mismatches(path) else record

    def _slot_name(self, slot: Path | str) -> SlotName:
        name = Path(slot).name
        for known in SLOTS:
            if name == known:
                return known
        raise StoreError(f"{slot}: not a slot of this store (slots are {', '.join(SLOTS)})")

    def commit(self, slot: Path | str, *, downgrade: bool = False) -> ActiveModel:
        """Make a staged slot active: the atomic replace of ``state.json`` is the commit point.

        ``downgrade`` as for :meth:`stage`.

        Raises
        ------
        StoreError
            ``slot`` is not a slot, or is the active one.
        UpdateRejected
            The slot is incomplete or damaged (``tampered``), or not newer (``replay``).
        """
        name = self._slot_name(slot)
        active = self._state.active
        if active is not None and active.slot == name:
            raise StoreError(f"slot {name} is already active; stage into {self.spare()}")
        record = self._slot_record(name)
        if record is None:
            raise UpdateRejected("tampered", f"slot {name} is incomplete or damaged")
        self._refuse(record.release, downgrade)
        self._write(self._state.model_copy(update={"active": record, "previous": active}))
        model = self.active()
        if model is None:  # unreachable: just written
            raise StoreError("commit did not record an active slot")
        return model

    def discard(self, slot: Path | str) -> None:
        """Delete a staged slot that will not be committed (never the active one)."""
        name = self._slot_name(slot)
        active = self._state.active
        if active is not None and active.slot == name:
            raise StoreError(f"slot {name} is active; it cannot be discarded")
        previous = self._state.previous
        if previous is not None and previous.slot == name:
            self._write(self._state.model_copy(update={"previous": None}))
        shutil.rmtree(self.slots_dir / name, ignore_errors=True)

    def rollback(self) -> ActiveModel:
        """Make the previous slot active again, after checking its files.

        Raises
        ------
        StoreError
            No previous model is kept, or its slot no longer matches its manifest.
        """
        previous = self._state.previous
        if previous is None:
            raise StoreError("no previous model to roll back to")
        if self._slot_record(previous.slot) != previous:
            raise StoreError(f"slot {previous.slot} (release {previous.release}) is damaged")
        self._write(
            self._state.model_copy(update={"active": previous, "previous": self._state.active})
        )
        model = self.active()
        if model is None:  # unreachable: just written
            raise StoreError("rollback did not record an active slot")
        return model

    def mark_bad(self, release: int, reason: str) -> None:
        """Remember that ``release`` failed here so it is never tried again."""
        bad = {**self._state.bad, release: reason}
        self._write(self._state.model_copy(update={"bad": bad}))

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """Yield a fresh empty directory for a download, removed afterwards."""
        base = self.root / "scratch"
        base.mkdir(exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=base))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def recover(self) -> ActiveModel | None:
        """Clean up after a crash and make sure the active slot is intact.

        Removes half-staged slots, temporary state files and downloads, then verifies the
        active slot's files against their sha256. A damaged active slot is replaced by the
        previous one if that is intact, else the store reports no model.

        Returns
        -------
        ActiveModel or None
            What to serve now.
        """
        for leftover in self.slots_dir.glob(".*.staging"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.root.glob(f".{STATE}.*.tmp"):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(self.root / "scratch", ignore_errors=True)
        self._state = self._read_state()
        active, previous = self._state.active, self._state.previous
        if active is None or self._slot_record(active.slot) == active:
            return self.active()
        log.warning("model store: active slot %s (release %s) is damaged", *_who(active))
        if previous is not None and self._slot_record(previous.slot) == previous:
            log.warning("model store: falling back to release %s", previous.release)
            self._write(self._state.model_copy(update={"active": previous, "previous": None}))
        else:
            log.warning("model store: no intact model left")
            self._write(self._state.model_copy(update={"active": None, "previous": None}))
        return self.active()


def _who(record: SlotRecord) -> tuple[str, int]:
    return record.slot, record.release
