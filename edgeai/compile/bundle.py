"""Compile an ONNX model into a bundle for one device profile, atomically.

The bundle is assembled in a temporary directory next to ``out`` and renamed into place
at the end, so a failed compile leaves neither ``out`` nor the temporary directory.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeai.compile import candidates as cand
from edgeai.compile.graph import (
    fit_versions,
    graph_inputs,
    graph_outputs,
    load_source,
    opset_of,
    optimize,
)
from edgeai.compile.score import GateMetric, gate_metric
from edgeai.compile.select import (
    Candidate,
    CompileOptions,
    choose,
    evaluate_candidate,
    host_stands_in,
    note_untimed,
    time_candidates,
)
from edgeai.data.datasets import load_npz
from edgeai.errors import CompileError, ConfigError, DataError, UnknownNameError
from edgeai.models.checkpoint import TASK_MODEL_PREFIX, is_checkpoint, load_checkpoint
from edgeai.plumbing.files import sha256_file
from edgeai.profiles import DeviceProfile
from edgeai.runtime import measure as ev
from edgeai.runtime.session import cpu_threads, provider_options

MANIFEST_VERSION = 1


def _provenance(model: onnx.ModelProto) -> dict[str, object]:
    out: dict[str, object] = {}
    for prop in model.metadata_props:
        if not prop.key.startswith("edgeai."):
            continue
        value: object = prop.value
        if prop.value in ("", "None"):
            value = None
        else:
            for kind in (int, float):
                try:
                    value = kind(prop.value)
                    break
                except ValueError:
                    continue
        out[prop.key.removeprefix("edgeai.")] = value
    return out


def _data(path: Path, shape: tuple[int | str | None, ...], opts: CompileOptions) -> tuple[Any, ...]:
    x, y = load_npz(path, float_targets=True)
    if tuple(x.shape[1:]) != tuple(shape[1:]):
        raise CompileError(
            f"{path}: samples have shape {list(x.shape[1:])} but the model takes "
            f"{list(shape[1:])}; give calibration data of the model's input shape"
        )
    if len(x) < 2:
        raise CompileError(f"{path}: needs at least 2 samples, has {len(x)}")
    n_cal = min(opts.calibration_samples, len(x) // 2)
    rest = slice(n_cal, n_cal + opts.eval_samples)
    return x[:n_cal], x[rest], y[rest]


def compile_model(
    model_path: Path,
    profile: DeviceProfile,
    calibration: Path,
    out: Path,
    *,
    options: CompileOptions | None = None,
    progress: Callable[[str], None] | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Compile ``model_path`` for ``profile`` into the bundle directory ``out``.

    Parameters
    ----------
    model_path
        An ONNX model with one float input whose batch dimension is dynamic, or an edgeai
        checkpoint (``.npz``; exported with the torch exporter first, needs the train extra).
    profile
        The device profile: precisions to try, opset/IR limits, budgets, providers.
    calibration
        An ``.npz`` data file (``X``, ``y``): the first samples calibrate int8, the rest
        check every candidate against the fp32 model and the labels.
    out
        The bundle directory; it must not exist (or be empty).
    options
        Sample counts and timing effort.
    progress
        Called with a short message at each step.
    version
        The model version recorded in the manifest (default: the first 12 hex digits of
        the bundle model's sha256).

    Returns
    -------
    dict
        The manifest written to ``out/manifest.json``.

    Raises
    ------
    CompileError
        Bad model, data or limits, or no candidate within budgets; nothing is left behind.
    """
    opts = options or CompileOptions()
    say = progress or (lambda _msg: None)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CompileError(f"{out}: already exists; remove it or choose another --out")
    if not is_checkpoint(model_path):
        return _compile(model_path, profile, calibration, out, opts, say, version, None)
    with tempfile.TemporaryDirectory(prefix="edgeai-export-") as exported:
        say(f"exporting checkpoint {model_path.name} to ONNX")
        onnx_path = _export(model_path, Path(exported) / f"{model_path.stem}.onnx")
        # The exported file is temporary: the checkpoint is the source of record.
        record = {
            "path": str(model_path.resolve()),
            "sha256": sha256_file(model_path),
            "format": "edgeai-checkpoint",
        }
        return _compile(onnx_path, profile, calibration, out, opts, say, version, record)


def _compile(  # noqa: PLR0917  (private; two call sites above)
    model_path: Path,
    profile: DeviceProfile,
    calibration: Path,
    out: Path,
    opts: CompileOptions,
    say: Callable[[str], None],
    version: str | None,
    source_record: dict[str, str] | None,
) -> dict[str, Any]:
    source = load_source(model_path)
    spec = graph_inputs(source)[0]
    x_cal, x_eval, y_eval = _data(calibration, spec.shape, opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        data = (x_cal, x_eval, y_eval)
        manifest = _build(model_path, source, profile, tmp, data, opts, say, version)
        if source_record is not None:
            manifest["source"].update(source_record)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
        tmp.chmod(0o755)
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _build(  # noqa: PLR0917  (private; one call site)
    model_path: Path,
    source: onnx.ModelProto,
    profile: DeviceProfile,
    tmp: Path,
    data: tuple[Any, ...],
    opts: CompileOptions,
    say: Callable[[str], None],
    version: str | None,
) -> dict[str, Any]:
    x_cal, x_eval, y_eval = data
    work = tmp / "work"
    work.mkdir()
    say(
        f"opset {opset_of(source)} -> limits opset {profile.opset_max}, IR {profile.ir_version_max}"
    )
    fitted, conversion = fit_versions(source, profile.opset_max, profile.ir_version_max)
    onnx.save(fitted, str(work / "converted.onnx"))
    if conversion is not None:
        _same_outputs(model_path, work / "converted.onnx", x_eval[:64], conversion)
    optimize(work / "converted.onnx", work / "fp32.onnx", "basic")
    base = onnx.load(str(work / "fp32.onnx"))
    if base.ir_version > profile.ir_version_max:  # ORT writes its own IR version
        base.ir_version = profile.ir_version_max
        onnx.save(base, str(work / "fp32.onnx"))
    fp32_session = ev.cpu_session(str(work / "fp32.onnx"), cpu_threads(profile))
    ref = ev.predict(fp32_session, x_eval)
    prov = _provenance(source)
    metric = gate_metric(prov.get("primary_metric"), y_eval)
    fp32_score = metric(ref, y_eval)
    say(f"gate metric {metric.name} ({metric.why}): fp32 {fp32_score:.4f}")
    timed = opts.measure_latency and host_stands_in(profile)
    qs = cand.QuantSettings(
        symmetric=any(ep.name == "TensorrtExecutionProvider" for ep in profile.execution_providers),
        reduce_range=False,
    )
    order = list(dict.fromkeys([*profile.precisions, "fp32"]))
    built: list[Candidate] = []
    skipped: list[cand.Skipped] = []
    for precision in order:
        say(f"building {precision}")
        c = Candidate(precision, work / f"{precision}.onnx")
        skip = cand.build_candidate(
            precision,
            work / "fp32.onnx",
            c.path,
            input_name=spec_name(base),
            calibration=x_cal,
            qs=qs,
        )
        if skip is not None:
            skipped.append(skip)
            continue
        _fix_ir(c.path, profile.ir_version_max)
        evaluate_candidate(c, ref, x_eval, y_eval, profile, metric=metric)
        if precision not in profile.precisions:
            c.notes.append("not offered by the profile; built as the fp32 reference")
            c.violations.append("not offered by the profile")
        built.append(c)
    winner, why, decision = _time_and_choose(
        built, x_eval, profile, opts, timed, (fp32_score, metric), say
    )
    say(f"chose {winner.precision}: {why}")
    shutil.copyfile(winner.path, tmp / "model.onnx")
    golden_x = np.ascontiguousarray(x_eval[: opts.golden_samples])
    golden_ref = ev.predict(fp32_session, golden_x)
    golden_out = ev.predict(ev.cpu_session(str(tmp / "model.onnx")), golden_x)
    diff = float(np.abs(golden_out - golden_ref).max())
    inputs, outputs = graph_inputs(base), graph_outputs(base)
    golden_arrays = {f"in.{inputs[0].name}": golden_x, f"out.{outputs[0].name}": golden_ref}
    np.savez(tmp / "golden.npz", allow_pickle=False, **golden_arrays)
    final = onnx.load(str(tmp / "model.onnx"))
    model_sha = sha256_file(tmp / "model.onnx")
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "model": {
            "name": str(prov.get("experiment") or model_path.stem),
            "version": version or model_sha[:12],
        },
        "profile": profile.name,
        "precision": winner.precision,
        "opset": opset_of(final),
        "ir_version": int(final.ir_version),
        "inputs": [s.as_json() for s in inputs],
        "outputs": [s.as_json() for s in outputs],
        "files": {"model.onnx": model_sha, "golden.npz": sha256_file(tmp / "golden.npz")},
        "opset_conversion": conversion,
        "source": {
            "path": str(model_path.resolve()),
            "sha256": sha256_file(model_path),
            "opset": opset_of(source),
            "ir_version": int(source.ir_version),
        },
        "round": prov.get("round"),
        "epsilon": prov.get("epsilon"),
        "delta": prov.get("delta"),
        "provenance": prov,
        "size_bytes": (tmp / "model.onnx").stat().st_size,
        "accuracy": {  # on the gate's metric: the task's primary one (score.py)
            "metric": metric.name,
            "metric_why": metric.why,
            "fp32": fp32_score,
            "bundle": winner.metrics.get("score"),
            "drop_pct": winner.metrics.get("accuracy_drop_pct"),
            "top1_agreement": winner.metrics.get("top1_agreement"),
            "samples": len(x_eval),
        },
        "latency": winner.metrics.get("latency_host"),
        "latency_host": platform.processor() or platform.machine() if timed else None,
        "execution_providers": [
            {"name": n, "options": o}
            for n, o in provider_options(profile, winner.precision, Path("<cache>"))
        ],
        "cpu_threads": profile.cpu.cores,
        "quantization": qs.describe() if winner.precision == "int8-static" else None,
        "graph_optimization": "ORT basic (portable); the runtime applies the rest at load",
        "golden": {
            "file": "golden.npz",
            "input_key": f"in.{inputs[0].name}",
            "output_key": f"out.{outputs[0].name}",
            "samples": len(golden_x),
            "atol": max(1e-4, 2 * diff),
            "observed_max_abs_diff": diff,
        },
        "candidates": [
            {
                "precision": c.precision,
                **c.metrics,
                "fits": not c.violations,
                "violations": c.violations,
                "notes": c.notes,
            }
            for c in built
        ]
        + [{"precision": s.precision, "skipped": s.reason} for s in skipped],
        "chosen": {"precision": winner.precision, "why": why, "timing": decision},
    }
    shutil.rmtree(work)
    return manifest


def _time_and_choose(  # noqa: PLR0917  (private; one call site)
    built: list[Candidate],
    x_eval: np.ndarray[Any, Any],
    profile: DeviceProfile,
    opts: CompileOptions,
    timed: bool,
    reference: tuple[float, GateMetric],
    say: Callable[[str], None],
) -> tuple[Candidate, str, dict[str, object] | None]:
    if timed:
        say(f"timing {[c.precision for c in built]} in {opts.latency_rounds} interleaved rounds")
        time_candidates(built, x_eval, profile, opts)
    else:
        note_untimed(built, profile)
    return choose(
        built,
        timed=timed,
        reference=reference[0],
        metric=reference[1],
        budget=profile.budgets.accuracy_drop_pct,
        min_speedup_pct=opts.min_speedup_pct,
    )


def _export(checkpoint: Path, dst: Path) -> Path:
    try:
        from edgeai.models.checkpoint import export_checkpoint  # noqa: PLC0415  (torch)
    except ImportError as exc:
        raise CompileError(
            f"{checkpoint}: exporting a checkpoint needs torch; install edgeai[train] or "
            "compile the model.onnx that `edgeai simulate` wrote"
        ) from exc
    try:
        ckpt = load_checkpoint(checkpoint)
        if ckpt.model.startswith(
            TASK_MODEL_PREFIX
        ):  # a task's model: rebuilt from its recorded config
            from edgeai.task.export import export_task_checkpoint  # noqa: PLC0415  (torch)

            return export_task_checkpoint(ckpt, dst)
        return export_checkpoint(ckpt, dst)
    except (DataError, UnknownNameError, ConfigError) as exc:
        raise CompileError(str(exc)) from exc


def spec_name(model: onnx.ModelProto) -> str:
    """Return the name of the model's (single) input."""
    return graph_inputs(model)[0].name


def _fix_ir(path: Path, ir_max: int) -> None:
    model = onnx.load(str(path))
    if model.ir_version > ir_max:
        model.ir_version = ir_max
        onnx.save(model, str(path))


def _same_outputs(source: Path, converted: Path, x: np.ndarray[Any, Any], how: str) -> None:
    want = ev.predict(ev.cpu_session(str(source)), x)
    got = ev.predict(ev.cpu_session(str(converted)), x)
    diff = float(np.abs(want - got).max())
    if diff > 1e-4 * max(1.0, float(np.abs(want).max())):
        raise CompileError(
            f"opset conversion ({how}) changed the outputs (max abs diff {diff:.3g}); "
            "re-export the model at the profile's opset_max"
        )
