"""Build one candidate model per precision from the prepared fp32 graph.

Each builder writes ``dst`` or raises; :func:`build_candidate` turns a reason not to build
(a conv net offered dynamic int8) into a :class:`Skipped` the manifest records.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray

from edgeai.compile.graph import linear_share
from edgeai.errors import CompileError

# Dynamic int8 quantizes only MatMul/Gemm weights and requantizes activations on every
# call; on conv nets that overhead made models 3-8x slower here, so below this share of
# MACs in MatMul/Gemm the candidate is skipped.
LINEAR_HEAVY_SHARE = 0.5
CALIBRATION_BATCH = 32

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """A precision the profile offers that was not built, and why."""

    precision: str
    reason: str


@dataclass(frozen=True)
class QuantSettings:
    """How a profile wants int8: symmetric signed activations for TensorRT, else u8s8."""

    symmetric: bool
    reduce_range: bool

    def describe(self) -> dict[str, object]:
        """Return the settings as JSON-ready facts for the manifest."""
        return {
            "format": "QDQ",
            "per_channel": True,
            "activations": "int8 symmetric" if self.symmetric else "uint8 asymmetric",
            "weights": "int8 symmetric",
            "reduce_range": self.reduce_range,
            "calibration": "MinMax",
        }


class _Reader:
    """A CalibrationDataReader over an array, in batches."""

    def __init__(self, name: str, x: NDArray[np.float32]) -> None:
        self._batches: Iterator[dict[str, NDArray[np.float32]]] = (
            {name: x[i : i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        return next(self._batches, None)


def int8_static(
    src: Path, dst: Path, input_name: str, calibration: NDArray[np.float32], qs: QuantSettings
) -> None:
    """Quantize ``src`` to per-channel QDQ int8 with activation ranges from ``calibration``."""
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        for op_types in (None, COMPUTE_OPS):
            quantize_static(
                str(pre),
                str(dst),
                _Reader(input_name, calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=qs.reduce_range,
                activation_type=QuantType.QInt8 if qs.symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=op_types,
                extra_options={
                    "ActivationSymmetric": qs.symmetric,
                    "WeightSymmetric": True,
                },
            )
            if not duplicate_outputs(onnx.load(str(dst))):
                return
        raise ValueError(f"{dst.name}: the quantized graph defines a tensor twice")


# ORT's quantize_static (seen with onnxruntime 1.32) on a GroupNorm that torch's dynamo exporter
# decomposed into Reshape → InstanceNormalization → Shape → Reshape inserts a
# DequantizeLinear whose output reuses the Shape node's output name ("Duplicate definition
# of name"); quantizing only the ops that gain from int8 avoids it.
COMPUTE_OPS = ["Conv", "MatMul", "Gemm", "Add", "Mul", "Relu"]


def duplicate_outputs(model: onnx.ModelProto) -> list[str]:
    """Tensor names that more than one node of ``model``'s main graph defines."""
    counts = Counter(o for n in model.graph.node for o in n.output)
    return sorted(name for name, count in counts.items() if count > 1)


def int8_dynamic(src: Path, dst: Path) -> None:
    """Quantize MatMul/Gemm weights to int8; activations are quantized at run time.

    ORT's pre-processing folds constants first: the torch exporter reorders an LSTM's
    gate weights through ops, and without folding ``quantize_dynamic`` finds no weight
    initializer behind them and leaves the recurrent layers fp32 (bench/shakespeare_int8.py).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    folded = dst.with_name(f"{dst.stem}.folded.onnx")
    try:
        quant_pre_process(str(src), str(folded), skip_symbolic_shape=True)
    except Exception as exc:  # an optional step: quantize the original instead
        log.info("pre-processing for dynamic int8 skipped: %s", exc)
        folded = src
    quantize_dynamic(str(folded), str(dst), per_channel=True, weight_type=QuantType.QInt8)


def fp16(src: Path, dst: Path) -> None:
    """Convert weights and compute to float16, keeping float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415

    model = onnx.load(str(src))
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(dst))


def build_candidate(
    precision: str,
    src: Path,
    dst: Path,
    *,
    input_name: str,
    calibration: NDArray[np.float32],
    qs: QuantSettings,
) -> Skipped | None:
    """Build ``precision`` from the fp32 model ``src`` into ``dst``.

    Returns
    -------
    Skipped or None
        Why the precision was not built, or None when ``dst`` was written.

    Raises
    ------
    CompileError
        The quantizer or converter failed on this graph.
    """
    if precision == "fp32":
        dst.write_bytes(src.read_bytes())
        return None
    if precision == "int8-dynamic":
        share, linear, conv = linear_share(onnx.load(str(src)))
        if share < LINEAR_HEAVY_SHARE:
            return Skipped(
                precision,
                f"conv-heavy model: MatMul/Gemm hold {share:.0%} of the MACs per sample "
                f"({linear:,} vs {conv:,} in Conv), below {LINEAR_HEAVY_SHARE:.0%}; dynamic "
                "int8 leaves Conv in fp32 and adds run-time requantization (3-8x slower on "
                "conv nets here)",
            )
    try:
        if precision == "int8-static":
            int8_static(src, dst, input_name, calibration, qs)
        elif precision == "int8-dynamic":
            int8_dynamic(src, dst)
        elif precision == "fp16":
            fp16(src, dst)
        else:
            raise CompileError(f"unknown precision {precision!r}")
    except CompileError:
        raise
    except Exception as exc:  # the quantizers raise bare RuntimeError/ValueError/KeyError
        log.warning("building %s failed: %s", precision, exc)
        return Skipped(precision, f"build failed: {type(exc).__name__}: {exc}")
    return None
