"""The device profile: one class of device, validated with errors that teach the fix.

Cross-field rules are field validators that read the fields declared before them, so an
error is reported on the field to change (``precisions = [...]: ...``), not on the file.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from edgeai.configfile import Frozen

Arch = Literal["x86_64", "aarch64"]
AcceleratorKind = Literal["none", "cuda", "jetson"]
EPName = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
Precision = Literal["fp32", "fp16", "int8-static", "int8-dynamic"]

KNOWN_EPS: tuple[str, ...] = get_args(EPName)
PRECISIONS: tuple[str, ...] = get_args(Precision)
TRT, CUDA, CPU = KNOWN_EPS

# Names as Linux prints them in /proc/cpuinfo, plus the aliases "neon" and "dotprod".
CPU_FEATURES: dict[str, frozenset[str]] = {
    "x86_64": frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                         "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8"}),
    "aarch64": frozenset({"neon", "asimd", "fphp", "asimdhp", "asimddp", "dotprod", "i8mm",
                          "bf16", "sve", "sve2"}),
}  # fmt: skip
DOTPROD = frozenset({"asimddp", "dotprod"})

# ONNX Runtime release -> (newest opset, newest IR version) it implements.
# Source: https://onnxruntime.ai/docs/reference/compatibility.html ("ONNX opset support").
ORT_LIMITS: dict[tuple[int, int], tuple[int, int]] = {
    (1, 9): (15, 8), (1, 10): (15, 8), (1, 11): (16, 8), (1, 12): (17, 8), (1, 13): (17, 8),
    (1, 14): (18, 8), (1, 15): (19, 8), (1, 16): (19, 9), (1, 17): (20, 9), (1, 18): (21, 10),
    (1, 19): (21, 10), (1, 20): (21, 10),
}  # fmt: skip
# TensorRT release -> newest opset its ONNX parser supports; newer nodes leave TensorRT for
# slower providers. Source: onnx-tensorrt docs/operators.md on each release branch.
TRT_OPSET_MAX: dict[tuple[int, int], int] = {(8, 0): 13, (8, 2): 13, (8, 5): 17, (8, 6): 17}
# Lowest compute capability with TensorRT INT8 kernels (TensorRT "hardware and precision"
# support matrix: Jetson Nano 5.3 and TX2 6.2 have none, Xavier 7.2 does; P100 6.0 has none).
INT8_MIN_CC: dict[str, tuple[int, int]] = {"jetson": (7, 2), "cuda": (6, 1)}


def _quoted_version(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f'write versions as quoted strings, e.g. "{value}" (YAML reads 12.10 as 12.1)'
        )
    return value


def _cc_text(value: object) -> object:
    # Compute capabilities have a one-digit minor, so a YAML float (8.7) is unambiguous.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(float(value))
    return value


Version = Annotated[str, BeforeValidator(_quoted_version), Field(pattern=r"^\d+(\.\d+){0,3}$")]
ComputeCapability = Annotated[str, BeforeValidator(_cc_text), Field(pattern=r"^\d+\.\d$")]


def _major_minor(text: str) -> tuple[int, int]:
    major, _, rest = text.partition(".")
    return int(major), int(rest.partition(".")[0] or 0)


class Cpu(Frozen):
    """The host CPU: core count and the instruction-set features ORT's kernels use."""

    model: str = ""
    cores: int = Field(ge=1)
    features: tuple[str, ...] = ()


class Accelerator(Frozen):
    """An NVIDIA GPU (``cuda``), a Jetson module (``jetson``), or nothing (``none``).

    ``onnxruntime`` is the ORT build installed there; on Jetson it is a JetPack build (no
    aarch64 CUDA wheel of onnxruntime-gpu is on PyPI), and it bounds opset and IR version.
    """

    kind: AcceleratorKind = "none"
    name: str = ""
    compute_capability: ComputeCapability | None = None
    dla_cores: int = Field(default=0, ge=0)
    memory_mb: int | None = Field(default=None, gt=0)  # dedicated memory; Jetson shares RAM
    jetpack: Version | None = None
    cuda: Version | None = None
    tensorrt: Version | None = None
    onnxruntime: Version | None = None

    @property
    def cc(self) -> tuple[int, int] | None:
        """Compute capability as ``(major, minor)``, or None without a GPU."""
        cc = self.compute_capability
        return None if cc is None else _major_minor(cc)

    @model_validator(mode="after")
    def _consistent(self) -> Accelerator:
        if self.dla_cores and self.kind != "jetson":
            raise ValueError(
                f"dla_cores = {self.dla_cores}, but only Jetson modules (Xavier, Orin) have "
                "DLA engines: set dla_cores: 0, or kind: jetson"
            )
        if self.jetpack is not None and self.kind != "jetson":
            raise ValueError("jetpack is set but kind is not 'jetson': remove it or fix kind")
        if self.kind == "none":
            stray = [f for f in ("compute_capability", "cuda", "tensorrt", "memory_mb")
                     if getattr(self, f) is not None]  # fmt: skip
            if stray:
                raise ValueError(
                    f"kind is 'none' but {', '.join(stray)} is set: remove it, "
                    "or set kind: cuda / jetson"
                )
            return self
        needed = ["compute_capability", "cuda", "onnxruntime"]
        if self.kind == "jetson":
            needed += ["jetpack", "tensorrt"]
        missing = [f for f in needed if getattr(self, f) is None]
        if missing:
            raise ValueError(
                f"kind {self.kind!r} needs {', '.join(missing)}: add the versions installed "
                "on the device (e.g. from `apt show nvidia-jetpack` or `nvidia-smi`)"
            )
        return self


class ExecutionProvider(Frozen):
    """One ONNX Runtime execution provider and its provider options."""

    name: EPName
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("name", mode="before")
    @classmethod
    def _known(cls, value: object) -> object:
        if isinstance(value, str) and value not in KNOWN_EPS:
            lowered = {name.lower(): name for name in KNOWN_EPS}  # "Cuda" is a case slip
            close = difflib.get_close_matches(value.lower(), lowered, n=1, cutoff=0.6)
            hint = f"did you mean {lowered[close[0]]!r}? " if close else ""
            raise ValueError(
                f"unknown execution provider {value!r}; {hint}known: {', '.join(KNOWN_EPS)}"
            )
        return value


class Budgets(Frozen):
    """What an artifact must meet on this device to be released to it."""

    model_size_mb: float = Field(gt=0)
    p95_latency_ms_batch1: float = Field(gt=0)
    accuracy_drop_pct: float = Field(ge=0, le=100)  # percentage points below fp32
    memory_mb: int = Field(gt=0)


class Simulation(Frozen):
    """Traits the simulator gives a client of this class."""

    relative_compute: float = Field(gt=0)  # an x86-64 AVX2 box is 1.0
    uplink_mbps: float = Field(gt=0)
    downlink_mbps: float = Field(gt=0)
    availability: float = Field(gt=0, le=1)  # fraction of rounds the device is reachable


class DeviceProfile(Frozen):
    """A device class. Field order matters: validators read the fields before them.

    ``execution_providers`` and ``precisions`` are ordered: providers as ORT tries them
    (CPU last, as the fallback), precisions as the compiler tries them (first that meets
    every budget wins).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    arch: Arch
    cpu: Cpu
    memory_mb: int = Field(gt=0)
    accelerator: Accelerator = Field(default_factory=Accelerator)
    execution_providers: tuple[ExecutionProvider, ...] = Field(min_length=1)
    precisions: tuple[Precision, ...] = Field(min_length=1)
    opset_max: int = Field(ge=7)
    ir_version_max: int = Field(ge=3)
    budgets: Budgets
    gpu_min_batch: int | None = Field(default=None, ge=1)
    simulation: Simulation

    def ort_providers(self) -> list[tuple[str, dict[str, str | int | float | bool]]]:
        """Return the providers in the form ``onnxruntime.InferenceSession`` takes."""
        return [(ep.name, dict(ep.options)) for ep in self.execution_providers]

    @field_validator("cpu")
    @classmethod
    def _features_match_arch(cls, cpu: Cpu, info: ValidationInfo) -> Cpu:
        arch = info.data.get("arch")
        if arch is None:
            return cpu
        known = CPU_FEATURES[arch]
        for feature in cpu.features:
            if feature in known:
                continue
            other = [a for a, names in CPU_FEATURES.items() if feature in names]
            if other:
                raise ValueError(f"features: {feature!r} is an {other[0]} feature, arch is {arch}")
            close = difflib.get_close_matches(feature, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            known_text = ", ".join(sorted(known))
            raise ValueError(
                f"features: unknown {arch} feature {feature!r}; {hint}known: {known_text}"
            )
        return cpu

    @field_validator("accelerator")
    @classmethod
    def _jetson_is_arm(cls, acc: Accelerator, info: ValidationInfo) -> Accelerator:
        if acc.kind == "jetson" and info.data.get("arch") not in (None, "aarch64"):
            raise ValueError("kind 'jetson' needs arch: aarch64 (every Jetson module is Arm)")
        return acc

    @field_validator("execution_providers")
    @classmethod
    def _providers(
        cls, eps: tuple[ExecutionProvider, ...], info: ValidationInfo
    ) -> tuple[ExecutionProvider, ...]:
        names = [ep.name for ep in eps]
        if len(set(names)) != len(names):
            raise ValueError(f"each provider may appear once, got {names}")
        if names[-1] != CPU:
            raise ValueError(
                f"the last provider must be {CPU}: ORT runs every node the others reject "
                f"on it; append {{name: {CPU}}} at the end"
            )
        acc: Accelerator | None = info.data.get("accelerator")
        if acc is None:
            return eps
        gpu_eps = [n for n in names if n != CPU]
        if gpu_eps and acc.kind == "none":
            raise ValueError(
                f"{' and '.join(gpu_eps)} need an NVIDIA GPU but accelerator.kind is 'none': "
                "remove them, or describe the GPU under accelerator"
            )
        if TRT in names and acc.tensorrt is None:
            raise ValueError(f"{TRT} needs accelerator.tensorrt (the TensorRT version there)")
        for ep in eps:
            dla = str(ep.options.get("trt_dla_enable", False)).lower() in ("true", "1")
            if dla and acc.dla_cores == 0:
                raise ValueError(
                    "trt_dla_enable is on but accelerator.dla_cores is 0: this device has no "
                    "DLA; remove trt_dla_enable"
                )
        return eps

    @field_validator("precisions")
    @classmethod
    def _precisions(
        cls, precisions: tuple[Precision, ...], info: ValidationInfo
    ) -> tuple[Precision, ...]:
        if len(set(precisions)) != len(precisions):
            raise ValueError(f"each precision may appear once, got {list(precisions)}")
        acc: Accelerator | None = info.data.get("accelerator")
        if acc is None:
            return precisions
        if "fp16" in precisions and acc.kind == "none":
            raise ValueError(
                "'fp16' needs a GPU (accelerator.kind cuda or jetson); ORT's CPU provider "
                "runs fp16 models through casts, slower than fp32: remove 'fp16'"
            )
        int8 = [p for p in precisions if p.startswith("int8")]
        cc = acc.cc
        if int8 and cc is not None and cc < INT8_MIN_CC[acc.kind]:
            need = ".".join(map(str, INT8_MIN_CC[acc.kind]))
            raise ValueError(
                f"{', '.join(int8)} impossible on compute capability {acc.compute_capability}: "
                f"TensorRT has INT8 kernels only from {need} on {acc.kind} (Jetson Nano is "
                "5.3, TX2 6.2): remove the int8 entries and use fp16"
            )
        cpu: Cpu | None = info.data.get("cpu")
        if (
            "int8-static" in precisions
            and info.data.get("arch") == "aarch64"
            and acc.kind == "none"
            and cpu is not None
            and not DOTPROD & set(cpu.features)
        ):
            raise ValueError(
                "'int8-static' needs the Arm dot-product extension (cpu.features 'asimddp', "
                "ARMv8.2+, e.g. Cortex-A76 in a Pi 5); without it (Cortex-A72 in a Pi 4) ORT's "
                "int8 kernels are typically no faster than fp32 yet cost accuracy: remove "
                "'int8-static' (keep 'int8-dynamic' to shrink the download), or add 'asimddp' "
                "if /proc/cpuinfo lists it"
            )
        return precisions

    @field_validator("opset_max", "ir_version_max")
    @classmethod
    def _onnx_limits(cls, value: int, info: ValidationInfo) -> int:
        acc: Accelerator | None = info.data.get("accelerator")
        ort = acc.onnxruntime if acc else None
        limits = ORT_LIMITS.get(_major_minor(ort)) if ort else None
        what, limit = ("opsets", 0) if info.field_name == "opset_max" else ("IR versions", 1)
        if limits and value > limits[limit]:
            raise ValueError(
                f"ONNX Runtime {ort} implements {what} up to {limits[limit]}: set "
                f"{info.field_name} <= {limits[limit]}, or raise accelerator.onnxruntime"
            )
        eps: tuple[ExecutionProvider, ...] = info.data.get("execution_providers", ())
        trt = acc.tensorrt if acc and any(ep.name == TRT for ep in eps) else None
        trt_limit = TRT_OPSET_MAX.get(_major_minor(trt)) if trt else None
        if info.field_name == "opset_max" and trt_limit and value > trt_limit:
            raise ValueError(
                f"TensorRT {trt}'s ONNX parser supports opsets up to {trt_limit}; newer nodes "
                f"fall back to slower providers: set opset_max <= {trt_limit}"
            )
        return value

    @field_validator("budgets")
    @classmethod
    def _budget_fits(cls, budgets: Budgets, info: ValidationInfo) -> Budgets:
        total = info.data.get("memory_mb")
        if total is not None and budgets.memory_mb > total:
            raise ValueError(
                f"memory_mb = {budgets.memory_mb} exceeds the device's memory_mb = {total}: "
                "lower the budget"
            )
        return budgets

    @field_validator("gpu_min_batch")
    @classmethod
    def _gpu_batch(cls, batch: int | None, info: ValidationInfo) -> int | None:
        acc: Accelerator | None = info.data.get("accelerator")
        if batch is not None and acc is not None and acc.kind == "none":
            raise ValueError("gpu_min_batch is set but the device has no GPU: remove it")
        return batch
