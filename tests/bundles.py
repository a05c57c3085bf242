"""Build real models and bundles for tests: a small CNN trained on MNIST, compiled per profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FAST_STEPS = 300


def train_and_export(root: Path, steps: int = FAST_STEPS, seed: int = 0) -> tuple[Path, Path]:
    """Train dp-cnn-tiny for ``steps`` Adam steps (~90 % on MNIST); export it and calibration data.

    Returns ``(model.onnx, cal.npz)``; the calibration file is uint8 validation images.
    """
    import torch  # noqa: PLC0415

    from edgeai.data import load_dataset  # noqa: PLC0415
    from edgeai.models import build_model  # noqa: PLC0415
    from edgeai.models.export import export_onnx  # noqa: PLC0415

    root.mkdir(parents=True, exist_ok=True)
    split = load_dataset("mnist")
    torch.manual_seed(seed)
    model = build_model("dp-cnn-tiny", (1, 28, 28), 10, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(split.train.x), torch.from_numpy(split.train.y)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    meta = {"edgeai.round": 3, "edgeai.epsilon": 2.5, "edgeai.delta": 1e-5}
    path = export_onnx(model, (1, 28, 28), root / "model.onnx", meta)
    val = split.validation
    calib = root / "cal.npz"
    np.savez(calib, X=np.round(val.x[:600, 0] * 255).astype(np.uint8), y=val.y[:600])
    return path, calib


def compile_bundle(model: Path, calibration: Path, out: Path, profile: str = "x86-64-avx2") -> Path:
    """Compile ``model`` for ``profile`` into ``out`` with test-sized sample counts."""
    from edgeai.compile import CompileOptions, compile_model  # noqa: PLC0415
    from edgeai.profiles import load_profile  # noqa: PLC0415

    fast = CompileOptions(calibration_samples=128, eval_samples=400, latency_repeats=20)
    compile_model(model, load_profile(profile), calibration, out, options=fast)
    return out


def bundle_variant(src: Path, dest: Path, version: str, *, golden_shift: float = 0.0) -> Path:
    """Copy a bundle as another model version (a distinct model file), optionally failing the gate.

    ``golden_shift`` moves the golden outputs so the on-device gate must reject the bundle;
    the manifest's sha256s are rewritten, so it is still a consistent, signable bundle.
    """
    import json  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    import onnx  # noqa: PLC0415

    from edgeai.plumbing.files import sha256_file  # noqa: PLC0415

    shutil.copytree(src, dest)
    model = onnx.load(str(dest / "model.onnx"))
    model.doc_string = f"version {version}"
    onnx.save(model, str(dest / "model.onnx"))
    manifest = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    if golden_shift:
        key = manifest["golden"]["output_key"]
        with np.load(dest / "golden.npz") as data:
            arrays = dict(data)
        arrays[key] = arrays[key] + golden_shift
        np.savez(dest / "golden.npz", **arrays)
    manifest["model"]["version"] = version
    manifest["files"] = {name: sha256_file(dest / name) for name in manifest["files"]}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return dest
