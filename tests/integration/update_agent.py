"""A minimal update agent run as a subprocess so tests can SIGKILL it at chosen moments.

Usage: ``python -m tests.integration.update_agent REPO_URL ROOT_JSON CACHE STORE``; prints
the outcome as JSON. Environment hooks (test only):

``EDGEAI_TEST_PAUSE_AT``
    ``download`` (after the first file of the release is on disk), ``stage`` (after the
    first file is copied into the spare slot), ``commit-before`` (new state written to its
    temporary file, not yet renamed) or ``commit-after`` (renamed, nothing after).
``EDGEAI_TEST_PAUSE_FILE``
    Created when the pause point is reached; the process then waits to be killed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from edgeai.artifacts import BundleUpdater, ModelStore, UpdaterConfig, apply_latest
from edgeai.artifacts import store as store_module
from edgeai.artifacts.fetch import HttpFetcher
from edgeai.profiles import load_profile

PAUSE_AT = os.environ.get("EDGEAI_TEST_PAUSE_AT", "")
PAUSE_FILE = os.environ.get("EDGEAI_TEST_PAUSE_FILE", "")


def pause() -> None:
    Path(PAUSE_FILE).write_text(str(os.getpid()), encoding="utf-8")
    while True:  # wait for SIGKILL; the test bounds how long it waits for us
        time.sleep(0.05)


class PausingFetcher(HttpFetcher):
    """Pauses when the second target file is requested (the first is complete on disk)."""

    targets_seen = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        if "/targets/" in url:
            self.targets_seen += 1
            if PAUSE_AT == "download" and self.targets_seen == 2:
                pause()
        return super()._fetch(url)


def install_store_hooks() -> None:
    real_fsync, real_write = store_module.fsync_file, store_module.atomic_write
    copied = 0

    def fsync_file(path: Path) -> None:
        nonlocal copied
        real_fsync(path)
        copied += 1
        if PAUSE_AT == "stage" and copied == 1:
            pause()

    def atomic_write(path: Path, data: bytes) -> None:
        if PAUSE_AT == "commit-before":
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            pause()
        real_write(path, data)
        if PAUSE_AT == "commit-after":
            pause()

    store_module.fsync_file = fsync_file  # type: ignore[assignment]
    store_module.atomic_write = atomic_write  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    url, root, cache, store_dir = argv
    install_store_hooks()
    config = UpdaterConfig(repository_url=url, trusted_root=Path(root), cache_dir=Path(cache))
    updater = BundleUpdater(config, PausingFetcher(config.socket_timeout_s))
    store = ModelStore(Path(store_dir))
    store.recover()
    events: list[tuple[str, dict[str, object]]] = []
    outcome = apply_latest(
        updater, store, load_profile("x86-64-avx2"), lambda k, f: events.append((k, f))
    )
    print(json.dumps({"outcome": asdict(outcome), "events": [k for k, _ in events]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
