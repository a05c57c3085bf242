"""Read, check and prepare an ONNX graph for compiling.

One float input with a dynamic batch, versions within a profile's limits, ORT's portable
graph optimizations, and a census of multiply-accumulates by op type.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import version_converter

from edgeai.errors import CompileError

_FLOAT_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
# Token ids (a text task's input): compiled like any other model; static int8 calibrates
# the activations behind the embedding.
_INPUT_TYPES = {**_FLOAT_TYPES, onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}
_ELEM_NAMES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape (``None`` for a symbolic dim)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def as_json(self) -> dict[str, object]:
        """Return the spec as a JSON-ready dict."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def _specs(values: list[onnx.ValueInfoProto]) -> tuple[TensorSpec, ...]:
    out = []
    for value in values:
        tensor = value.type.tensor_type
        dims: list[int | str | None] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            else:
                dims.append(dim.dim_param or None)
        out.append(
            TensorSpec(value.name, _ELEM_NAMES.get(int(tensor.elem_type), "other"), tuple(dims))
        )
    return tuple(out)


def graph_inputs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    """Return the graph's real inputs (initializers listed as inputs are left out)."""
    weights = {init.name for init in model.graph.initializer}
    return _specs([v for v in model.graph.input if v.name not in weights])


def graph_outputs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    """Return the graph's outputs."""
    return _specs(list(model.graph.output))


def opset_of(model: onnx.ModelProto) -> int:
    """Return the model's ai.onnx opset version."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise CompileError("the model imports no ai.onnx opset; is it an ONNX model at all?")


def load_source(path: Path) -> onnx.ModelProto:
    """Read an ONNX model and check that it has one float input with a dynamic batch.

    Raises
    ------
    CompileError
        The file is missing, not ONNX, uses external data, or has the wrong interface.
    """
    if not path.is_file():
        raise CompileError(f"{path}: model file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError …
        raise CompileError(f"{path}: not a valid ONNX model ({exc})") from exc
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise CompileError(f"{path}: weights in external data files; save it as a single file")
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise CompileError(f"{path}: expected one input, found {[i.name for i in inputs]}")
    spec = inputs[0]
    elem = model.graph.input[[v.name for v in model.graph.input].index(spec.name)]
    if elem.type.tensor_type.elem_type not in _INPUT_TYPES:
        raise CompileError(
            f"{path}: input {spec.name!r} is {spec.dtype}; a float input (or int64 token ids) "
            "is needed"
        )
    if not spec.shape or isinstance(spec.shape[0], int):
        raise CompileError(
            f"{path}: input {spec.name!r} has shape {list(spec.shape)}; the first (batch) "
            "dimension must be dynamic: export with dynamic_shapes / dynamic_axes on dim 0"
        )
    if any(not isinstance(d, int) for d in spec.shape[1:]):
        raise CompileError(
            f"{path}: input {spec.name!r} has shape {list(spec.shape)}; only the batch may be "
            "dynamic"
        )
    return model


def fit_versions(
    model: onnx.ModelProto, opset_max: int, ir_max: int
) -> tuple[onnx.ModelProto, str | None]:
    """Convert ``model`` down to ``opset_max`` and ``ir_max`` if it is above them.

    ``onnx.version_converter`` has no down-adapters for many ops (e.g. Sub 14 -> 13), so
    when it fails each node is checked against the older schema instead: if the node's
    inputs and attributes mean the same there (newer opsets mostly add types), only the
    opset import changes. The caller verifies the outputs against the source model.

    Returns
    -------
    tuple
        The model and how it was converted (None when no conversion was needed).

    Raises
    ------
    CompileError
        Neither route can express the graph in that opset or IR version.
    """
    opset = opset_of(model)
    method: str | None = None
    if opset > opset_max:
        try:
            converted = version_converter.convert_version(model, opset_max)
            onnx.checker.check_model(converted)
            model, method = converted, "onnx.version_converter"
        except Exception as exc:  # the converter raises bare RuntimeError / ValidationError
            model = _relabel(model, opset, opset_max, exc)
            method = "same-semantics relabel (version_converter has no adapter)"
    needed = _min_ir(opset_of(model))
    if needed > ir_max:
        raise CompileError(
            f"opset {opset_of(model)} needs IR version {needed}, above the profile's "
            f"ir_version_max {ir_max}: lower opset_max in the profile"
        )
    model.ir_version = min(model.ir_version, ir_max)
    return model, method


def _relabel(model: onnx.ModelProto, opset: int, target: int, cause: Exception) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    problems = []
    for node in out.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            old = onnx.defs.get_schema(node.op_type, target)
        except onnx.defs.SchemaError:
            problems.append(f"{node.op_type} does not exist in opset {target}")
            continue
        new = onnx.defs.get_schema(node.op_type, opset)
        if len(node.input) > old.max_input or len(node.output) > old.max_output:
            problems.append(f"{node.op_type}: inputs/outputs differ in opset {target}")
        for attr in list(node.attribute):
            if attr.name in old.attributes:
                continue
            default = (
                new.attributes[attr.name].default_value if attr.name in new.attributes else None
            )
            if _same_value(default, attr) or _harmless_allowzero(out, node, attr):
                node.attribute.remove(attr)  # set to the newer default: same meaning
            else:
                problems.append(f"{node.op_type}: attribute {attr.name!r} is new after {target}")
    if problems:
        raise CompileError(
            f"cannot convert the model from opset {opset} to {target} (the profile's "
            f"opset_max): {cause}; {'; '.join(sorted(set(problems)))}. Re-export it with "
            f"opset_version={target}"
        ) from cause
    for entry in out.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = target
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception as exc:  # ValidationError / InferenceError
        raise CompileError(f"the model does not validate at opset {target}: {exc}") from exc
    return out


def _harmless_allowzero(
    model: onnx.ModelProto, node: onnx.NodeProto, attr: onnx.AttributeProto
) -> bool:
    # allowzero only changes what a 0 in the target shape means; a constant shape without
    # zeros (what torch's exporter writes) reshapes the same at opset 13.
    if node.op_type != "Reshape" or attr.name != "allowzero":
        return False
    shape = next((i for i in model.graph.initializer if i.name == node.input[1]), None)
    return shape is not None and bool((onnx.numpy_helper.to_array(shape) != 0).all())


def _same_value(default: onnx.AttributeProto | None, attr: onnx.AttributeProto) -> bool:
    if default is None or not default.HasField("type") or default.type != attr.type:
        return False
    return bool(onnx.helper.get_attribute_value(default) == onnx.helper.get_attribute_value(attr))


def _min_ir(opset: int) -> int:
    best = 100
    for _release, ir, ai_onnx, *_ in onnx.helper.VERSION_TABLE:
        if ai_onnx >= opset:
            best = min(best, int(ir))
    return best


def optimize(src: Path, dst: Path, level: str = "basic") -> None:
    """Apply ORT's graph optimizations of ``level`` on CPU and save the result to ``dst``.

    ``basic`` (constant folding, redundant-node removal) keeps standard ONNX ops, so the
    file stays portable to TensorRT and CUDA; ``extended`` adds CPU-only fused ops.
    """
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    options.optimized_model_filepath = str(dst)
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph / NotImplemented
        raise CompileError(f"ONNX Runtime cannot load the model: {exc}") from exc


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]


def linear_share(model: onnx.ModelProto) -> tuple[float, int, int]:
    """Return (share of MACs in MatMul/Gemm, their MACs, Conv MACs) per sample.

    Uses ONNX shape inference; a symbolic dimension (the batch) counts as 1.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: _dims(v) for v in (*inferred.graph.value_info, *inferred.graph.input,
                                         *inferred.graph.output)}  # fmt: skip
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    linear = conv = 0
    for node in inferred.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in shapes:
            weight = shapes[node.input[1]]  # (M, C/group, kH, kW)
            conv += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0])
            if not a:
                continue
            trans_a = any(att.name == "transA" and att.i for att in node.attribute)
            k = a[-2] if trans_a and len(a) >= 2 else a[-1]
            linear += int(np.prod(out)) * int(k)
    total = linear + conv
    return (linear / total if total else 0.0), linear, conv
