"""Device profiles: the shipped files, the cross-field rules, the loader and the CLI."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgeai.configfile import parse, read_mapping
from edgeai.errors import ConfigError, UnknownNameError
from edgeai.profiles import (
    DeviceProfile,
    list_profiles,
    load_profile,
    profile_names,
    profiles_dir,
)
from edgeai.profiles.commands import app
from edgeai.profiles.loader import ENV_VAR
from edgeai.profiles.schema import PRECISIONS

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "device_profiles"
REQUIRED = {
    "x86-64-avx2",
    "x86-64-vnni",
    "x86-64-cuda",
    "rpi4",
    "rpi5",
    "jetson-nano",
    "jetson-xavier-nx",
    "jetson-orin-nano-8gb",
    "jetson-agx-orin-64gb",
}
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture(autouse=True)
def _default_profiles_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def base(name: str) -> dict[str, Any]:
    """A shipped profile as a plain dict, to mutate into a broken one."""
    return copy.deepcopy(read_mapping(SHIPPED / f"{name}.yaml"))


def check(data: dict[str, Any]) -> DeviceProfile:
    return parse(DeviceProfile, data, "test.yaml")


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        check(data)
    return str(info.value)


# --- shipped profiles ---------------------------------------------------------------------


def test_default_dir_is_the_repo_device_profiles() -> None:
    assert profiles_dir().resolve() == SHIPPED.resolve()


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_profile_validates_and_is_named_for_its_file(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem
    assert profile.execution_providers[-1].name == CPU
    assert profile.budgets.memory_mb <= profile.memory_mb


def test_the_required_profiles_are_shipped() -> None:
    assert set(profile_names()) >= REQUIRED
    profiles = list_profiles()
    assert [p.name for p in profiles] == sorted(p.name for p in profiles)
    assert {p.name for p in profiles} >= REQUIRED


def test_hardware_facts_the_rules_rely_on() -> None:
    nano = load_profile("jetson-nano")
    assert nano.accelerator.compute_capability == "5.3"
    assert nano.accelerator.dla_cores == 0
    assert not any(p.startswith("int8") for p in nano.precisions)
    assert load_profile("jetson-xavier-nx").accelerator.dla_cores == 2
    assert load_profile("jetson-agx-orin-64gb").accelerator.dla_cores == 2
    assert load_profile("jetson-orin-nano-8gb").accelerator.dla_cores == 0
    assert "asimddp" not in load_profile("rpi4").cpu.features
    assert "asimddp" in load_profile("rpi5").cpu.features
    assert "int8-static" in load_profile("rpi5").precisions
    assert "avx512_vnni" in load_profile("x86-64-vnni").cpu.features


def test_profile_is_immutable_and_gives_ort_providers() -> None:
    profile = load_profile("x86-64-cuda")
    with pytest.raises(ValueError, match="frozen"):
        profile.name = "other"  # type: ignore[misc]
    providers = profile.ort_providers()
    assert [name for name, _ in providers] == [TRT, CUDA, CPU]
    assert providers[1][1]["device_id"] == 0


# --- cross-field rules --------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value

    return mutate


RULES: list[tuple[str, str, Mutation, str, str]] = [
    # (id, base profile, mutation, field named in the error line, words of the fix)
    ("fp16-needs-gpu", "rpi5", _set("precisions", ["fp16", "fp32"]), "precisions", "fp16"),
    ("fp16-on-x86-cpu", "x86-64-avx2", _set("precisions", ["fp16"]), "precisions", "GPU"),
    ("int8-on-nano", "jetson-nano", _set("precisions", ["int8-static", "fp16"]), "precisions",
     "5.3"),
    ("int8-dynamic-on-nano", "jetson-nano", _set("precisions", ["int8-dynamic"]), "precisions",
     "TensorRT"),
    ("int8-static-on-pi4", "rpi4", _set("precisions", ["int8-static", "fp32"]), "precisions",
     "asimddp"),
    ("trt-needs-accelerator", "rpi4",
     _set("execution_providers", [{"name": TRT}, {"name": CPU}]), "execution_providers",
     "NVIDIA GPU"),
    ("cuda-needs-accelerator", "x86-64-avx2",
     _set("execution_providers", [{"name": CUDA}, {"name": CPU}]), "execution_providers",
     "NVIDIA GPU"),
    ("cpu-must-be-last", "x86-64-cuda",
     _set("execution_providers", [{"name": CPU}, {"name": CUDA}]), "execution_providers",
     "last"),
    ("cpu-must-be-present", "x86-64-cuda", _set("execution_providers", [{"name": CUDA}]),
     "execution_providers", CPU),
    ("ep-once", "rpi4", _set("execution_providers", [{"name": CPU}, {"name": CPU}]),
     "execution_providers", "once"),
    ("dla-only-on-jetson", "x86-64-cuda", _set("accelerator.dla_cores", 2), "accelerator",
     "dla_cores"),
    ("dla-not-without-accelerator", "rpi5", _set("accelerator.dla_cores", 1), "accelerator",
     "dla_cores"),
    ("trt-dla-needs-dla", "jetson-orin-nano-8gb",
     _set("execution_providers", [{"name": TRT, "options": {"trt_dla_enable": True}},
                                  {"name": CPU}]),
     "execution_providers", "dla_cores"),
    ("jetson-is-aarch64", "jetson-nano", _set("arch", "x86_64"), "accelerator", "aarch64"),
    ("jetson-needs-jetpack", "jetson-nano", _set("accelerator.jetpack", None), "accelerator",
     "jetpack"),
    ("none-has-no-cuda", "rpi4", _set("accelerator.cuda", "12.6"), "accelerator", "cuda"),
    ("opset-above-ort", "jetson-nano", _set("opset_max", 17), "opset_max", "1.11"),
    ("opset-above-tensorrt", "jetson-xavier-nx", _set("opset_max", 19), "opset_max", "TensorRT"),
    ("ir-above-ort", "jetson-nano", _set("ir_version_max", 9), "ir_version_max", "8"),
    ("budget-above-memory", "rpi4", _set("budgets.memory_mb", 8192), "budgets", "memory_mb"),
    ("gpu-batch-needs-gpu", "rpi5", _set("gpu_min_batch", 4), "gpu_min_batch", "no GPU"),
    ("availability-range", "rpi4", _set("simulation.availability", 1.5), "simulation.availability",
     "1"),
    ("relative-compute-positive", "rpi4", _set("simulation.relative_compute", 0),
     "simulation.relative_compute", "0"),
    ("feature-of-other-arch", "rpi5", _set("cpu.features", ["avx2"]), "cpu", "x86_64"),
    ("feature-typo", "x86-64-avx2", _set("cpu.features", ["avx3"]), "cpu", "did you mean"),
    ("version-must-be-quoted", "jetson-nano", _set("accelerator.cuda", 10.2), "accelerator.cuda",
     "quoted"),
    ("unknown-precision", "rpi4", _set("precisions", ["int4"]), "precisions", "int8-dynamic"),
    ("precision-once", "rpi4", _set("precisions", ["fp32", "fp32"]), "precisions", "once"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "mutate", "field", "fix"), [r[1:] for r in RULES], ids=[r[0] for r in RULES]
)
def test_rule_rejects_with_the_field_and_the_fix(
    profile: str, mutate: Mutation, field: str, fix: str
) -> None:
    data = base(profile)
    check(copy.deepcopy(data))  # the unmutated base is valid: the mutation is what fails
    mutate(data)
    message = error_of(data)
    assert message.startswith("test.yaml: ")
    lines = [line.strip() for line in message.splitlines()[1:]]
    hit = [line for line in lines if line.startswith((f"{field} ", f"{field}."))]
    assert hit, f"no line names {field!r}:\n{message}"
    assert fix in hit[0], message


def test_pi4_with_dotprod_may_use_int8_static() -> None:
    data = base("rpi4")
    data["cpu"]["features"] = ["asimd", "asimddp"]
    data["precisions"] = ["int8-static", "fp32"]
    assert check(data).precisions[0] == "int8-static"


def test_int8_allowed_on_xavier_rejected_on_p100() -> None:
    assert "int8-static" in load_profile("jetson-xavier-nx").precisions
    data = base("x86-64-cuda")
    data["accelerator"]["compute_capability"] = "6.0"  # P100: no INT8 in TensorRT
    assert "6.0" in error_of(data)


def test_compute_capability_may_be_a_yaml_number() -> None:
    data = base("jetson-nano")
    data["accelerator"]["compute_capability"] = 5.3
    assert check(data).accelerator.cc == (5, 3)


def test_unknown_execution_provider_lists_the_known_ones() -> None:
    data = base("x86-64-cuda")
    data["execution_providers"][1]["name"] = "CudaExecutionProvider"
    message = error_of(data)
    assert "execution_providers.1.name" in message
    assert "did you mean 'CUDAExecutionProvider'" in message
    for known in (TRT, CUDA, CPU):
        assert known in message


def test_typo_field_gets_did_you_mean() -> None:
    data = base("rpi4")
    data["budgetz"] = data.pop("budgets")
    message = error_of(data)
    assert "budgetz" in message
    assert "did you mean 'budgets'?" in message


def test_nested_typo_field_gets_did_you_mean() -> None:
    data = base("rpi4")
    data["budgets"]["p95_latency_ms"] = data["budgets"].pop("p95_latency_ms_batch1")
    assert "did you mean 'p95_latency_ms_batch1'?" in error_of(data)


@given(st.sets(st.sampled_from(PRECISIONS), min_size=1))
def test_cpu_only_precisions_property(chosen: set[str]) -> None:
    # On a Pi 4 (no GPU, no dot product) a precision list is valid exactly when it has
    # neither fp16 nor int8-static; the order does not matter.
    data = base("rpi4")
    data["precisions"] = sorted(chosen)
    valid = not chosen & {"fp16", "int8-static"}
    if valid:
        assert set(check(data).precisions) == chosen
    else:
        with pytest.raises(ConfigError, match="precisions"):
            check(data)


# --- loader -------------------------------------------------------------------------------


def test_unknown_profile_name_lists_known_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_profile("rpi3")
    assert isinstance(info.value, LookupError)
    assert "unknown device profile 'rpi3'" in str(info.value)
    assert "rpi4" in str(info.value)
    assert "jetson-nano" in info.value.known


def test_name_must_equal_file_stem(tmp_path: Path) -> None:
    data = base("rpi5")
    path = tmp_path / "my-pi.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"name = 'rpi5': must equal the file name"):
        load_profile(path)
    data["name"] = "my-pi"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert load_profile(str(path)).name == "my-pi"


def test_missing_file_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_profile(tmp_path / "nope.yaml")


def test_env_var_overrides_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = base("rpi4")
    data["name"] = "lab-pi"
    (tmp_path / "lab-pi.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert profiles_dir() == tmp_path
    assert [p.name for p in list_profiles()] == ["lab-pi"]
    assert load_profile("lab-pi").arch == "aarch64"
    with pytest.raises(UnknownNameError, match="lab-pi"):
        load_profile("rpi4")


def test_missing_directory_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=ENV_VAR):
        list_profiles()


# --- CLI ----------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_list_shows_every_profile() -> None:
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in REQUIRED:
        assert name in result.stdout
    assert "TensorRT > CUDA > CPU" in result.stdout


def test_cli_show_json_round_trips() -> None:
    result = runner.invoke(app, ["show", "jetson-xavier-nx", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["name"] == "jetson-xavier-nx"
    assert data["accelerator"]["dla_cores"] == 2
    assert DeviceProfile.model_validate(data) == load_profile("jetson-xavier-nx")


def test_cli_show_yaml_matches_json() -> None:
    as_yaml = runner.invoke(app, ["show", str(SHIPPED / "rpi5.yaml")])
    as_json = runner.invoke(app, ["show", "rpi5", "--json"])
    assert as_yaml.exit_code == 0, as_yaml.output
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)


def test_cli_show_unknown_name_exits_2_with_a_red_line() -> None:
    result = runner.invoke(app, ["show", "rpi3"])
    assert result.exit_code == 2
    assert "unknown device profile 'rpi3'" in result.stderr
    assert result.stdout == ""


def test_cli_show_invalid_file_prints_one_line_per_problem(tmp_path: Path) -> None:
    data = base("rpi4")
    data["precisions"] = ["fp16"]
    data["budgetz"] = data.pop("budgets")
    path = tmp_path / "rpi4.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(str(path))
    assert any(line.strip().startswith("precisions") for line in lines)
    assert any("did you mean 'budgets'" in line for line in lines)
