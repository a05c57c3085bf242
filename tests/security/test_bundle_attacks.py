"""Tampered variants of a real bundle, fed through every entry point that takes a bundle.

Entry points: ``edgeai agent serve`` (a real process: exit 2, one ``error:`` line, nothing
bound), ``edgeai agent run`` with the variant as its factory bundle (a real process: exit 2,
one line, nothing installed), and the update path (``apply_latest`` with the real store and
the real gate: rejected, the original release keeps serving). Each variant is also checked
in-process by :func:`~edgeai.artifacts.gate.verify_bundle`, the one verification all of
them share. The last test shows the limit: a bundle rewritten consistently (model, golden
outputs and manifest hashes together) passes every check that needs no signature, and only
TUF refuses it (docs/AGENT.md, "Bundles you point it at").
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeai.artifacts import ArtifactRepository, BundleUpdater, ModelStore, UpdaterConfig, serve
from edgeai.artifacts.apply import apply_latest
from edgeai.artifacts.gate import InvalidBundle, verify_bundle
from edgeai.artifacts.updater import ReleaseInfo, SignedReleases
from edgeai.profiles import DeviceProfile, load_profile

PROFILE = "x86-64-avx2"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


# -- building variants -----------------------------------------------------------------------


def _sha(path: Path) -> str:
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(d: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    return manifest


def _write(d: Path, manifest: dict[str, Any]) -> None:
    (d / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _rehash(d: Path, *names: str) -> None:
    """Make the manifest agree with the files again: what an attacker with write access does."""
    manifest = _manifest(d)
    for name in names:
        manifest["files"][name] = _sha(d / name)
    _write(d, manifest)


def _edit_bias(d: Path, by: float = 1000.0) -> None:
    """Add ``by`` to one float vector, the classifier's bias where it is one: a wildly wrong model.

    The bundle may be fp32 or int8 (compile prefers the smaller candidate unless the larger
    is clearly faster, so which one depends on the machine's load). An int8-static model
    keeps float vectors its quantized path no longer reads, so the vector edited is the
    first, in order of preference (as long as the class count, last first), whose edit moves
    the golden outputs by more than 1 under ONNX Runtime.
    """
    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415

    spec = _manifest(d)["golden"]
    with np.load(d / "golden.npz") as data:
        x, before = data[spec["input_key"]], data[spec["output_key"]]
    model = onnx.load(str(d / "model.onnx"))
    classes = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    vectors = [t for t in model.graph.initializer if len(t.dims) == 1 and t.data_type == 1][::-1]
    for vector in sorted(vectors, key=lambda t: t.dims[0] != classes):  # stable: last first
        original = numpy_helper.to_array(vector).copy()
        vector.CopyFrom(numpy_helper.from_array(original + np.float32(by), vector.name))
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        after = session.run(None, {session.get_inputs()[0].name: x})[0]
        if float(np.abs(after - before).max()) > 1.0:
            onnx.save(model, str(d / "model.onnx"))
            return
        vector.CopyFrom(numpy_helper.from_array(original, vector.name))
    raise AssertionError(f"{d}: no float vector of the model moves its outputs")


def _golden(d: Path, change: Callable[[dict[str, np.ndarray]], dict[str, Any]]) -> None:
    with np.load(d / "golden.npz") as data:
        arrays = dict(data)
    np.savez(d / "golden.npz", **change(arrays))


def _out_key(d: Path) -> str:
    return str(_manifest(d)["golden"]["output_key"])


def _shift_golden(d: Path) -> None:
    key = _out_key(d)
    _golden(d, lambda a: {**a, key: a[key] + 3.0})


def _empty_golden(d: Path) -> None:
    _golden(d, lambda a: {k: v[:0] for k, v in a.items()})


def _pickled_golden(d: Path) -> None:
    key = _out_key(d)
    _golden(d, lambda a: {**a, key: np.array([{"x": 1}], dtype=object)})


def _golden_from_model(d: Path) -> None:
    """Recompute the golden outputs from the (edited) model: the consistent rewrite."""
    import onnxruntime as ort  # noqa: PLC0415

    spec = _manifest(d)["golden"]
    session = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    with np.load(d / "golden.npz") as data:
        x = data[spec["input_key"]]
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.savez(d / "golden.npz", **{spec["input_key"]: x, spec["output_key"]: out})


def _edit_manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        manifest = _manifest(d)
        change(manifest)
        _write(d, manifest)

    return mutate


def _symlink_out(name: str) -> Callable[[Path], None]:
    """Replace ``name`` by a symlink to an identical copy outside the bundle (hash matches)."""

    def mutate(d: Path) -> None:
        outside = d.parent / f"{d.name}-outside-{name}"
        shutil.copyfile(d / name, outside)
        (d / name).unlink()
        (d / name).symlink_to(outside)

    return mutate


def _fifo(name: str) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        (d / name).unlink()
        os.mkfifo(d / name)

    return mutate


def _steps(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        for step in steps:
            step(d)

    return mutate


def _set(path: Sequence[str], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _add_file(name: str, digest: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["files"].__setitem__(name, digest)


def _drop_file(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["files"].pop(name)


PASSWD_SHA = _sha(Path("/etc/passwd")) if Path("/etc/passwd").is_file() else "0" * 64


@dataclass(frozen=True)
class Attack:
    name: str
    mutate: Callable[[Path], None]
    says: str  # what the one error line must contain (it names the file and the problem)


ATTACKS: tuple[Attack, ...] = (
    Attack("model-bias-edited", _edit_bias, "model.onnx: sha256"),
    Attack(
        "model-bias-edited-manifest-rehashed",
        _steps(_edit_bias, lambda d: _rehash(d, "model.onnx")),
        "golden: max abs diff",
    ),
    Attack(
        "model-truncated-rehashed",
        _steps(
            lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:2000]),
            lambda d: _rehash(d, "model.onnx"),
        ),
        "model.onnx: cannot be loaded",
    ),
    Attack("model-missing", lambda d: (d / "model.onnx").unlink(), "model.onnx: unreadable"),
    Attack(
        "model-not-listed", _edit_manifest(_drop_file("model.onnx")), "model.onnx is not covered"
    ),
    Attack("model-symlink-out", _symlink_out("model.onnx"), "outside the bundle"),
    Attack("model-fifo", _fifo("model.onnx"), "model.onnx: not a regular file"),
    Attack("golden-swapped", _shift_golden, "golden.npz: sha256"),
    Attack(
        "golden-swapped-rehashed",
        _steps(_shift_golden, lambda d: _rehash(d, "golden.npz")),
        "golden: max abs diff",
    ),
    Attack(
        "golden-empty-rehashed",
        _steps(_empty_golden, lambda d: _rehash(d, "golden.npz")),
        "no golden samples",
    ),
    Attack(
        "golden-pickled-rehashed",
        _steps(_pickled_golden, lambda d: _rehash(d, "golden.npz")),
        "golden.npz: unreadable",
    ),
    Attack("golden-fifo", _fifo("golden.npz"), "golden.npz: not a regular file"),
    Attack(
        "golden-not-listed",
        _edit_manifest(_drop_file("golden.npz")),
        "golden file 'golden.npz' is not covered",
    ),
    Attack("golden-wrong-key", _edit_manifest(_set(("golden", "output_key"), "out.x")), "no array"),
    Attack(
        "model-edited-atol-huge",
        _steps(
            _edit_bias,
            lambda d: _rehash(d, "model.onnx"),
            _edit_manifest(_set(("golden", "atol"), 1e9)),
        ),
        "is not below the outputs' range",
    ),
    Attack("atol-nan", _edit_manifest(_set(("golden", "atol"), float("nan"))), "golden.atol"),
    Attack("atol-zero", _edit_manifest(_set(("golden", "atol"), 0)), "golden.atol"),
    Attack(
        "files-traversal",
        _edit_manifest(_add_file("../../../../etc/passwd", PASSWD_SHA)),
        "not a plain file name",
    ),
    Attack(
        "files-absolute", _edit_manifest(_add_file("/etc/passwd", PASSWD_SHA)), "not a plain file"
    ),
    Attack("files-dotdot", _edit_manifest(_add_file("..", PASSWD_SHA)), "not a plain file name"),
    Attack(
        "files-nul", _edit_manifest(_add_file("model.onnx\x00", PASSWD_SHA)), "not a plain file"
    ),
    Attack(
        "files-sha-not-hex",
        _edit_manifest(_set(("files", "model.onnx"), "deadbeef")),
        "is not a sha256 hex",
    ),
    Attack("manifest-symlink-out", _symlink_out("manifest.json"), "outside the bundle"),
    Attack(
        "manifest-not-json",
        lambda d: (d / "manifest.json").write_text("{not json", encoding="utf-8"),
        "unreadable manifest",
    ),
    Attack("manifest-missing", lambda d: (d / "manifest.json").unlink(), "not a bundle directory"),
    Attack(
        "manifest-huge",
        lambda d: (d / "manifest.json").write_text(
            json.dumps(_manifest(d)) + " " * (5 << 20), encoding="utf-8"
        ),
        "not a manifest",
    ),
    Attack(
        "manifest-files-not-a-table",
        _edit_manifest(_set(("files",), ["model.onnx"])),
        "non-empty 'files' table",
    ),
    Attack(
        "manifest-version-future",
        _edit_manifest(_set(("manifest_version",), 99)),
        "manifest_version 99",
    ),
    Attack(
        "profile-mismatch",
        _edit_manifest(_set(("profile",), "rpi5")),
        "compiled for profile 'rpi5'",
    ),
    Attack(
        "input-name-wrong",
        _edit_manifest(_set(("inputs", 0, "name"), "nope")),  # type: ignore[arg-type]
        "model.onnx: fails on the golden inputs",
    ),
)
IDS = [a.name for a in ATTACKS]


def _build(src: Path, root: Path, attack: Attack) -> Path:
    dest = root / attack.name
    shutil.copytree(src, dest)
    attack.mutate(dest)
    return dest


@pytest.fixture(scope="module")
def variants(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("attacks")
    return {a.name: _build(tiny_bundle, root, a) for a in ATTACKS}


@pytest.fixture(scope="module")
def profile() -> DeviceProfile:
    return load_profile(PROFILE)


def _one_error_line(stderr: str) -> str:
    """The single ``error:`` line of a refusal; no traceback, nothing else said as an error."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


# -- the shared verification, in-process ---------------------------------------------------------


def test_the_untouched_bundle_passes(tiny_bundle: Path, profile: DeviceProfile) -> None:
    verified = verify_bundle(tiny_bundle, profile)
    assert verified.measurements["max_abs_diff"] <= verified.measurements["atol"]


@pytest.mark.parametrize("attack", ATTACKS, ids=IDS)
def test_verify_bundle_refuses(
    attack: Attack, variants: dict[str, Path], profile: DeviceProfile
) -> None:
    with pytest.raises(InvalidBundle) as info:
        verify_bundle(variants[attack.name], profile)
    assert attack.says in str(info.value)
    assert "\n" not in str(info.value)


def test_manifest_version_matches_the_compiler() -> None:
    from edgeai.artifacts import _bundle  # noqa: PLC0415
    from edgeai.compile.bundle import MANIFEST_VERSION  # noqa: PLC0415

    assert _bundle.MANIFEST_VERSION == MANIFEST_VERSION


# -- edgeai agent serve, a real process ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _serve_once(bundle: Path) -> tuple[subprocess.CompletedProcess[str], int, int]:
    grpc_port, http_port = _free_port(), _free_port()
    cmd = [str(BIN / "edgeai"), "agent", "serve", str(bundle), "--profile", PROFILE,
           "--grpc-port", str(grpc_port), "--http-port", str(http_port)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120, check=False)
    return done, grpc_port, http_port


@pytest.mark.integration
def test_agent_serve_refuses_every_variant(variants: dict[str, Path], tiny_bundle: Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(IDS, pool.map(_serve_once, [variants[n] for n in IDS]), strict=True))
    survived = []
    for attack in ATTACKS:
        done, grpc_port, http_port = results[attack.name]
        if done.returncode != 2:
            survived.append(f"{attack.name}: exit {done.returncode}\n{done.stderr[-2000:]}")
            continue
        line = _one_error_line(done.stderr)
        assert attack.says in line, (attack.name, line)
        assert line.startswith("error: refusing to serve: ")
        assert "serving" not in done.stdout  # it never got as far as listening
        assert _refused(grpc_port)
        assert _refused(http_port)
    print(f"\nagent serve: {len(ATTACKS)} attacks tried, {len(ATTACKS) - len(survived)} refused")
    assert not survived, "\n".join(survived)


# -- edgeai agent run, the factory bundle, a real process --------------------------------------


def _agent_once(bundle: Path, root: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    root.mkdir()
    config = root / "agent.toml"
    config.write_text(
        f'node = "sec"\nprofile = "{PROFILE}"\nstate_dir = "state"\nbundle = "{bundle}"\n'
        "discovery = false\n[federation]\nenabled = false\n"
        "[serving]\ngrpc_port = 0\nhttp_port = 0\n",
        encoding="utf-8",
    )
    cmd = [sys.executable, "-m", "edgeai.cli", "agent", "run", "-c", str(config)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120, check=False)
    return done, root / "state" / "models"


@pytest.mark.integration
def test_agent_run_refuses_every_variant_as_factory_bundle(
    variants: dict[str, Path], tmp_path: Path
) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = pool.map(lambda n: _agent_once(variants[n], tmp_path / n), IDS)
        results = dict(zip(IDS, runs, strict=True))
    survived = []
    for attack in ATTACKS:
        done, store_dir = results[attack.name]
        if done.returncode != 2:
            survived.append(f"{attack.name}: exit {done.returncode}\n{done.stderr[-2000:]}")
            continue
        line = _one_error_line(done.stderr)
        assert line.startswith("error: agent.toml: bundle "), line
        assert attack.says in line, (attack.name, line)
        assert "serving" not in done.stderr.replace("serving nothing", "")
        assert ModelStore(store_dir).recover() is None  # nothing was installed
    print(f"\nagent run: {len(ATTACKS)} attacks tried, {len(ATTACKS) - len(survived)} refused")
    assert not survived, "\n".join(survived)


# -- the update path: the real store and gate ----------------------------------------------------


class DirectorySource:
    """A release source whose "downloads" hand over a directory as it is (symlinks, FIFOs).

    It stands for the worst a download could leave in the scratch directory; the real
    :class:`~edgeai.artifacts.BundleUpdater` only ever writes regular files it has verified.
    """

    def __init__(self) -> None:
        self.published: dict[int, Path] = {}

    def releases(self, profile: str) -> SignedReleases:
        infos = tuple(ReleaseInfo(profile, r, f"r{r}", ()) for r in sorted(self.published))
        return SignedReleases(profile, infos)

    def download(self, release: ReleaseInfo, dest_dir: Path, mirrors: Sequence[str] = ()) -> Path:
        del mirrors
        dest_dir.mkdir()
        for entry in self.published[release.release].iterdir():
            target = dest_dir / entry.name
            if entry.is_symlink():
                target.symlink_to(entry.readlink())
            elif entry.is_fifo():
                os.mkfifo(target)
            else:
                shutil.copyfile(entry, target)
        return dest_dir


def test_update_path_refuses_every_variant_and_keeps_the_original(
    variants: dict[str, Path], tiny_bundle: Path, tmp_path: Path, profile: DeviceProfile
) -> None:
    store = ModelStore(tmp_path / "models")
    source = DirectorySource()
    events: list[tuple[str, dict[str, Any]]] = []
    source.published[1] = tiny_bundle
    first = apply_latest(source, store, profile, lambda k, f: events.append((k, f)))
    assert first.status == "applied", events
    survived = []
    for number, attack in enumerate(ATTACKS, start=2):
        source.published = {1: tiny_bundle, number: variants[attack.name]}
        outcome = apply_latest(source, store, profile, lambda k, f: events.append((k, f)))
        active = store.active()
        if outcome.status != "rejected" or active is None or active.release != 1:
            survived.append(f"{attack.name}: {outcome}")
            continue
        assert outcome.reason in ("tampered", "gate"), (attack.name, outcome)
        detail = events[-2 if outcome.reason == "gate" else -1][1]["detail"]
        assert attack.says in detail, (attack.name, detail)
    print(f"\nupdate path: {len(ATTACKS)} attacks tried, {len(ATTACKS) - len(survived)} refused")
    assert not survived, "\n".join(survived)
    active = store.recover()  # checks the active slot's sha256s again
    assert active is not None
    assert (active.release, active.version) == (1, _manifest(tiny_bundle)["model"]["version"])
    verify_bundle(active.path, profile)  # the original, still servable


# -- the limit: a consistent rewrite -----------------------------------------------------------


def test_a_consistent_rewrite_passes_local_checks_and_only_tuf_refuses_it(
    tiny_bundle: Path, tmp_path: Path, profile: DeviceProfile
) -> None:
    """Model edited, golden outputs recomputed from it, manifest rehashed: self-consistent.

    Nothing in an unsigned directory tells this from an operator's own bundle, so
    ``agent serve`` and a factory bundle accept it (docs/AGENT.md says so). The same
    rewrite on the repository server is refused by TUF: the signed hashes differ.
    """
    rewrite = _steps(_edit_bias, _golden_from_model, lambda d: _rehash(d, "model.onnx"),
                     lambda d: _rehash(d, "golden.npz"))  # fmt: skip
    local = tmp_path / "rewritten"
    shutil.copytree(tiny_bundle, local)
    rewrite(local)
    verify_bundle(local, profile)  # the documented limit: no signature, no way to tell

    repo = ArtifactRepository.create(tmp_path / "repo")
    repo.add_release(PROFILE, tiny_bundle, 1)
    repo.add_release(PROFILE, tiny_bundle, 2)
    served = repo.path / "targets" / PROFILE / "2"
    for name in ("model.onnx", "golden.npz", "manifest.json"):
        (target,) = served.glob(f"*.{name}")
        target.write_bytes((local / name).read_bytes())
    store = ModelStore(tmp_path / "models")
    events: list[tuple[str, dict[str, Any]]] = []
    with serve(repo.path, "127.0.0.1", 0) as server:
        config = UpdaterConfig(
            repository_url=server.url,
            trusted_root=repo.root_path,
            cache_dir=tmp_path / "tuf",
            download_deadline_s=60,
        )
        sink: Callable[[str, dict[str, Any]], None] = lambda k, f: events.append((k, f))  # noqa: E731
        store.commit(store.stage(tiny_bundle, 1))
        outcome = apply_latest(BundleUpdater(config), store, profile, sink)
    assert (outcome.status, outcome.reason) == ("rejected", "tampered"), events
    active = store.active()
    assert active is not None
    assert active.release == 1
