"""Time a bundle against ORT fp32 and torch eager fp32 on the same inputs.

Engines are timed in interleaved rounds (A, B, C, A, B, C, …) and the medians over rounds
reported, so a noisy neighbour or a frequency change hits every engine alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeai.errors import ConfigError
from edgeai.plumbing.files import sha256_file
from edgeai.runtime import measure as ev

ROUNDS = 5
Runner = ev.Runner


@dataclass
class BenchReport:
    """Medians per engine: ``{engine: {p50_ms_batch1, p95_ms_batch1, throughput_batch64}}``.

    Each engine also has ``throughput_spread_pct``: the range of its throughput over the
    rounds in % of the median, the noise a ratio between engines should be read against.
    """

    bundle: Path
    precision: str
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def ratio(self, a: str, b: str, metric: str) -> float | None:
        """Return how many times faster engine ``a`` is than ``b`` on ``metric``."""
        if a not in self.results or b not in self.results:
            return None
        x, y = self.results[a][metric], self.results[b][metric]
        return x / y if metric.startswith("throughput") else y / x


def torch_from_onnx(path: Path, input_shape: tuple[int, ...], classes: int) -> Any | None:
    """Rebuild an edgeai model in torch with the ONNX file's weights, or None if none fits.

    Every registered architecture is built and kept if its ``state_dict`` names and shapes
    all appear among the ONNX initializers (the torch exporter keeps parameter names).
    """
    import onnx  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415

    from edgeai.models import build_model, model_names  # noqa: PLC0415

    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for name in model_names():
        try:
            model = build_model(name, input_shape, classes)
        except Exception:  # noqa: S112  (an architecture that cannot take this shape)
            continue
        state = model.state_dict()
        if state and all(k in weights and tuple(weights[k].shape) == tuple(v.shape)
                         for k, v in state.items()):  # fmt: skip
            model.load_state_dict({k: torch.from_numpy(weights[k].copy()) for k in state})
            return model.eval()
    return None


def _torch_runner(model: Any) -> Runner:
    import torch  # noqa: PLC0415

    def run(x: NDArray[np.float32]) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def bench_bundle(bundle: Path, reference: Path | None = None, repeats: int = 200) -> BenchReport:
    """Time ``bundle`` against ORT fp32 (the source model) and torch eager fp32.

    Parameters
    ----------
    bundle
        A bundle directory from ``edgeai compile``.
    reference
        The fp32 ONNX model; defaults to the manifest's source path.
    repeats
        Timed batch-1 calls per engine, spread over the interleaved rounds.

    Returns
    -------
    BenchReport
        Median p50/p95 latency at batch 1 and throughput at batch 64 per engine.
    """
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise ConfigError(f"{bundle}: not a bundle (no manifest.json); run `edgeai compile`")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    report = BenchReport(bundle, str(manifest["precision"]))
    with np.load(bundle / manifest["golden"]["file"]) as golden:
        x = golden[manifest["golden"]["input_key"]].astype(np.float32)
    engines: dict[str, Runner] = {
        f"bundle ({report.precision})": ev.session_runner(
            ev.cpu_session(str(bundle / "model.onnx"))
        )
    }
    ref = reference or Path(manifest["source"]["path"])
    if not ref.is_file():
        report.notes.append(f"ORT fp32 and torch skipped: reference model {ref} not found")
    else:
        if reference is None and sha256_file(ref) != manifest["source"]["sha256"]:
            report.notes.append(f"{ref} changed since the compile (sha256 differs)")
        engines["ORT fp32"] = ev.session_runner(ev.cpu_session(str(ref)))
        classes = int(manifest["outputs"][0]["shape"][-1])
        model = torch_from_onnx(ref, tuple(x.shape[1:]), classes)
        if model is None:
            report.notes.append("torch eager skipped: not an edgeai architecture")
        else:
            engines["torch eager fp32"] = _torch_runner(model)
    for name, timing in ev.time_interleaved(engines, x, repeats, ROUNDS).items():
        median = timing.median()
        report.results[name] = {
            "p50_ms_batch1": median.p50_ms_batch1,
            "p95_ms_batch1": median.p95_ms_batch1,
            "throughput_batch64": median.throughput_batch64,
            "throughput_spread_pct": timing.throughput_spread_pct(),
        }
    return report


def render(report: BenchReport, console: Any) -> None:
    """Print ``report`` as a rich table followed by the speed-up ratios."""
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"{report.bundle} ({report.precision}), medians of {ROUNDS} rounds")
    for col in ("engine", "p50 ms (b=1)", "p95 ms (b=1)", "samples/s (b=64)", "noise %"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for name, r in report.results.items():
        table.add_row(name, f"{r['p50_ms_batch1']:.4f}", f"{r['p95_ms_batch1']:.4f}",
                      f"{r['throughput_batch64']:.0f}",
                      f"{r['throughput_spread_pct']:.1f}")  # fmt: skip
    console.print(table)
    bundle = next(iter(report.results))
    for a, b, metric, label in (
        ("ORT fp32", "torch eager fp32", "p50_ms_batch1", "ORT fp32 / torch eager, batch 1"),
        (bundle, "ORT fp32", "p50_ms_batch1", "bundle / ORT fp32, batch 1"),
        (bundle, "ORT fp32", "throughput_batch64", "bundle / ORT fp32, batch 64"),
    ):
        ratio = report.ratio(a, b, metric)
        if ratio is not None:
            console.print(f"{label}: {ratio:.2f}x faster")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
