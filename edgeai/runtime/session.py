"""Build an ONNX Runtime session for a bundle on a device profile, falling back in order.

A wheel can list a provider that fails at run time (no driver, wrong CUDA, a TensorRT
engine that will not build), so each provider must also pass a smoke inference before it
is trusted; otherwise the next one in the profile's order is tried and the reason kept.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgeai.errors import ConfigError, EdgeAIError
from edgeai.profiles import DeviceProfile

log = logging.getLogger(__name__)

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
ProviderOptions = dict[str, str | int | float | bool]
_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,  # token ids (zeros: a valid id)
    "tensor(int32)": np.int32,
}


class RuntimeLoadError(EdgeAIError, RuntimeError):
    """No execution provider of the profile could load and run the model."""


@dataclass(frozen=True)
class Fallback:
    """A provider that was passed over, and why."""

    provider: str
    reason: str


class LoadedSession(NamedTuple):
    """A session that passed its smoke inference, the provider it runs on, what was skipped."""

    session: Any  # onnxruntime.InferenceSession (untyped package)
    provider: str
    fallbacks: tuple[Fallback, ...]


def _on(value: object) -> bool:
    return str(value).lower() in ("true", "1")


def provider_options(
    profile: DeviceProfile, precision: str, cache_dir: Path | None = None
) -> list[tuple[str, ProviderOptions]]:
    """Return the profile's providers with options completed for ``precision``.

    TensorRT gets fp16/int8 flags from the precision (an int8 QDQ graph also enables fp16
    so layers without scales don't run in fp32), engine and timing caches under
    ``cache_dir``, and a DLA core when the profile enables DLA.

    Parameters
    ----------
    profile
        The device profile.
    precision
        The bundle's precision (``fp32``, ``fp16``, ``int8-static``, ``int8-dynamic``).
    cache_dir
        Where TensorRT keeps engines; None leaves the paths out (ORT uses the cwd).
    """
    out: list[tuple[str, ProviderOptions]] = []
    for name, options in profile.ort_providers():
        opts: ProviderOptions = dict(options)
        if name == TRT:
            opts["trt_fp16_enable"] = precision in ("fp16", "int8-static")
            opts["trt_int8_enable"] = precision.startswith("int8")
            if cache_dir is not None:
                if _on(opts.get("trt_engine_cache_enable")):
                    opts["trt_engine_cache_path"] = str(cache_dir / "engines")
                if _on(opts.get("trt_timing_cache_enable")):
                    opts["trt_timing_cache_path"] = str(cache_dir / "timing")
            if _on(opts.get("trt_dla_enable")) and profile.accelerator.dla_cores:
                opts.setdefault("trt_dla_core", 0)
        out.append((name, opts))
    return out


def cpu_threads(profile: DeviceProfile) -> int:
    """Return the intra-op thread count: the profile's cores, at most the CPUs we may use."""
    # Affinity, not os.cpu_count(): more intra-op threads than the CPUs this process may
    # run on (taskset, a cpuset, systemd's CPUAffinity=) only time-slice them: on a server
    # pinned to one CPU, 2 threads took 133 us per batch-1 run of the FedAvg CNN, 1 took 84.
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(profile.cpu.cores, usable or 1))


def _resolve(bundle_or_model: Path) -> tuple[Path, str]:
    if not bundle_or_model.is_dir():
        if not bundle_or_model.is_file():
            raise ConfigError(f"{bundle_or_model}: no such bundle directory or model file")
        return bundle_or_model, "fp32"
    model = bundle_or_model / "model.onnx"
    manifest_path = bundle_or_model / "manifest.json"
    if not model.is_file() or not manifest_path.is_file():
        raise ConfigError(f"{bundle_or_model}: not a bundle (needs model.onnx and manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        return model, str(manifest["precision"])
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{manifest_path}: unreadable manifest ({exc})") from exc


def smoke_input(session: Any) -> dict[str, np.ndarray[Any, Any]]:
    """Return zeros of every input's shape, batch (and any symbolic dim) set to 1."""
    feeds: dict[str, np.ndarray[Any, Any]] = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        feeds[arg.name] = np.zeros(shape, dtype=_DTYPES.get(arg.type, np.float32))
    return feeds


def create_session(
    bundle_or_model: Path,
    profile: DeviceProfile,
    cache_dir: Path | None = None,
    available: Sequence[str] | None = None,
    factory: Callable[..., Any] | None = None,
) -> LoadedSession:
    """Load a bundle (or an ONNX file) on the first of the profile's providers that works.

    Parameters
    ----------
    bundle_or_model
        A bundle directory (its manifest gives the precision) or an ``.onnx`` file (fp32).
    profile
        The device profile: providers in order, with options, and CPU cores.
    cache_dir
        TensorRT engine and timing caches; defaults to ``~/.cache/edgeai/trt``.
    available
        Providers this ORT build offers; defaults to ``onnxruntime.get_available_providers()``.
    factory
        Builds the session (``onnxruntime.InferenceSession`` by default); tests inject one.

    Returns
    -------
    LoadedSession
        ``(session, provider, fallbacks)``: the session, the provider it runs on, and each
        provider passed over with the reason.

    Raises
    ------
    RuntimeLoadError
        Not even the CPU provider could load and run the model.
    """
    import onnxruntime as ort  # noqa: PLC0415

    model, precision = _resolve(bundle_or_model)
    offered = list(ort.get_available_providers() if available is None else available)
    make = factory or ort.InferenceSession
    cache = cache_dir or Path.home() / ".cache" / "edgeai" / "trt"
    providers = provider_options(profile, precision, cache)
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads(profile)
    options.log_severity_level = 3
    fallbacks: list[Fallback] = []
    for index, (name, _) in enumerate(providers):
        reason = _try(name, offered)
        if reason is None:
            if name == TRT:
                cache.mkdir(parents=True, exist_ok=True)
            try:
                session = make(str(model), options, providers=providers[index:])
                got = session.get_providers()
                if not got or got[0] != name:
                    reason = f"the session came up on {got[:1]} instead (provider failed to load)"
                else:
                    session.run(None, smoke_input(session))
                    if fallbacks:
                        log.warning("running on %s after: %s", name, "; ".join(
                            f"{f.provider}: {f.reason}" for f in fallbacks))  # fmt: skip
                    return LoadedSession(session, name, tuple(fallbacks))
            except Exception as exc:  # ORT raises Fail/RuntimeException/EPFail, all untyped
                reason = f"smoke inference failed: {type(exc).__name__}: {exc}"
        log.warning("skipping %s: %s", name, reason)
        fallbacks.append(Fallback(name, reason))
    raise RuntimeLoadError(
        f"{model}: no execution provider could run it: "
        + "; ".join(f"{f.provider}: {f.reason}" for f in fallbacks)
    )


def _try(name: str, offered: Sequence[str]) -> str | None:
    if name in offered:
        return None
    hint = {
        TRT: " (needs onnxruntime-gpu built with TensorRT, e.g. a JetPack build)",
        CUDA: " (install onnxruntime-gpu; there is no aarch64 CUDA wheel on PyPI)",
    }.get(name, "")
    return f"not in this onnxruntime build's providers {offered}{hint}"
