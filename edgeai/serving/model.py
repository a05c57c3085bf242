"""The served model (an ONNX Runtime session with its KServe v2 metadata) and its holder.

The holder lets the agent swap in a new model while requests are in flight.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeai.errors import ConfigError
from edgeai.profiles import DeviceProfile

PLATFORM = "onnxruntime_onnx"

# ONNX Runtime type strings -> KServe v2 datatypes (Open Inference Protocol, "Tensor Data Types").
_ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, KServe v2 datatype, shape with -1 for variable dims."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any] | None:
        """The numpy dtype, or None for a type served here only as metadata (BYTES)."""
        return V2_TO_NUMPY.get(self.datatype)

    def as_json(self) -> dict[str, Any]:
        """The KServe v2 REST ``$metadata_tensor`` object."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


# eq=False: a model is identified by the object (the batcher keys its queues by it), and the
# ORT session is not comparable anyway.
@dataclass(frozen=True, eq=False)
class ServedModel:
    """A loaded model as the inference server sees it."""

    name: str
    version: str
    provider: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    session: Any  # onnxruntime.InferenceSession (untyped package)
    platform: str = PLATFORM
    # Providers of the profile passed over at load, each "Provider: reason".
    fallbacks: tuple[str, ...] = ()
    input_index: dict[str, TensorSpec] = field(init=False, repr=False)
    output_index: dict[str, TensorSpec] = field(init=False, repr=False)
    output_names: tuple[str, ...] = field(init=False, repr=False)
    batchable: bool = field(init=False, repr=False)
    """Whether requests can be stacked along the first axis of every tensor."""

    def __post_init__(self) -> None:
        # Computed once: every request reads them (the per-request path is hot).
        object.__setattr__(self, "input_index", {s.name: s for s in self.inputs})
        object.__setattr__(self, "output_index", {s.name: s for s in self.outputs})
        object.__setattr__(self, "output_names", tuple(s.name for s in self.outputs))
        batchable = all(s.shape[:1] == (-1,) for s in (*self.inputs, *self.outputs))
        object.__setattr__(self, "batchable", batchable)

    def run(self, feeds: dict[str, np.ndarray[Any, Any]]) -> list[np.ndarray[Any, Any]]:
        """Run the session on ``feeds``; every output, in ``outputs`` order."""
        out: list[np.ndarray[Any, Any]] = self.session.run(self.output_names, feeds)
        return out


def _spec(arg: Any) -> TensorSpec:
    datatype = _ORT_TO_V2.get(arg.type)
    if datatype is None:
        raise ConfigError(f"tensor {arg.name!r} has type {arg.type}, which KServe v2 cannot carry")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


def served_from_session(session: Any, name: str, version: str, provider: str) -> ServedModel:
    """Describe an ONNX Runtime ``session`` as a :class:`ServedModel`."""
    return ServedModel(
        name=name,
        version=version,
        provider=provider,
        inputs=tuple(_spec(a) for a in session.get_inputs()),
        outputs=tuple(_spec(a) for a in session.get_outputs()),
        session=session,
    )


def _no_spinning(model: str, options: Any, providers: Any) -> Any:
    import onnxruntime as ort  # noqa: PLC0415

    # ORT's intra-op pool spin-waits for work after every run by default; between requests
    # that burns a core the event loop, the clients and the rest of the device need
    # (measured: ~0.5 ms of CPU per tiny request).
    # The key is in onnxruntime_session_options_config_keys.h of the ORT sources.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=providers)


def load_served(bundle_dir: Path, profile: DeviceProfile, *, spin: bool = False) -> ServedModel:
    """Load a compiled bundle for serving on ``profile``.

    Parameters
    ----------
    bundle_dir
        A bundle directory (``model.onnx`` and ``manifest.json``).
    profile
        The device profile: execution providers in order of preference.
    spin
        Let ORT's threads spin-wait between runs (lower latency under a steady stream,
        at the cost of a busy core); off by default.

    Returns
    -------
    ServedModel
        Named and versioned from the manifest's ``model`` entry; tensor specs from the
        session (the authority on what the graph accepts).

    Raises
    ------
    ConfigError
        Not a bundle, or an unreadable manifest.
    RuntimeLoadError
        No execution provider could run the model.
    """
    from edgeai.runtime.session import create_session  # noqa: PLC0415  (imports onnxruntime)

    manifest_path = bundle_dir / "manifest.json"
    if not bundle_dir.is_dir() or not manifest_path.is_file():
        raise ConfigError(f"{bundle_dir}: not a bundle directory (needs manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        name, version = str(manifest["model"]["name"]), str(manifest["model"]["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    loaded = create_session(bundle_dir, profile, factory=None if spin else _no_spinning)
    served = served_from_session(loaded.session, name, version, loaded.provider)
    reasons = tuple(f"{f.provider}: {f.reason}" for f in loaded.fallbacks)
    return dataclasses.replace(served, fallbacks=reasons) if reasons else served


class ModelHolder:
    """The model currently served; swapped atomically by the agent after an update.

    A request reads :meth:`current` once and keeps that object, so requests in flight
    finish on the model they started with while the next one sees the new model.
    """

    def __init__(self, model: ServedModel | None = None) -> None:
        self._lock = threading.Lock()
        self._model = model

    def current(self) -> ServedModel | None:
        """The model to use for a new request, or None while there is none (not ready)."""
        return self._model  # a single attribute read is atomic

    def swap(self, new: ServedModel | None) -> ServedModel | None:
        """Serve ``new`` from the next request on; return the model it replaced."""
        with self._lock:
            old, self._model = self._model, new
        return old
