"""Signed model distribution: a TUF repository, the device's updater, a two-slot store.

Server side: :class:`ArtifactRepository` and :func:`serve`. Device side:
:class:`BundleUpdater` (TUF client, LAN mirrors), :class:`ModelStore` (two slots, atomic
swap, crash recovery), :func:`verify_bundle` (what a bundle proves about itself),
:func:`run_gate` (that, then the budgets), and :func:`apply_latest`, which strings them
together. No torch: this runs on
inference-only devices.
"""

from edgeai.artifacts._bundle import InvalidBundle
from edgeai.artifacts._http import ServeHandle, serve_mirror
from edgeai.artifacts.apply import Outcome, ReleaseSource, apply_latest
from edgeai.artifacts.errors import REASONS, ArtifactError, StoreError, UpdateRejected
from edgeai.artifacts.gate import GateResult, GateSettings, run_gate, verify_bundle
from edgeai.artifacts.repository import ArtifactRepository, serve
from edgeai.artifacts.store import ActiveModel, ModelStore
from edgeai.artifacts.updater import BundleUpdater, ReleaseInfo, SignedReleases, UpdaterConfig

__all__ = [
    "REASONS",
    "ActiveModel",
    "ArtifactError",
    "ArtifactRepository",
    "BundleUpdater",
    "GateResult",
    "GateSettings",
    "InvalidBundle",
    "ModelStore",
    "Outcome",
    "ReleaseInfo",
    "ReleaseSource",
    "ServeHandle",
    "SignedReleases",
    "StoreError",
    "UpdateRejected",
    "UpdaterConfig",
    "apply_latest",
    "run_gate",
    "serve",
    "serve_mirror",
    "verify_bundle",
]
