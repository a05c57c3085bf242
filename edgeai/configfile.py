"""Read TOML and YAML files into immutable pydantic models with errors that teach the fix."""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, TypeVar, overload

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edgeai.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound="Frozen")


class Frozen(BaseModel):
    """Base of every config model: immutable, unknown keys are errors (typos).

    TOML and YAML both spell infinity and NaN (``inf``, ``.nan``); no setting of ours
    means either, and ``target_epsilon = inf`` used to pass ``gt=0`` and fail later.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def read_mapping(path: Path) -> dict[str, Any]:
    """Parse a TOML or YAML file into a dict, naming the file in every error."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}, line {line}); save the file as UTF-8"
        ) from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{path}: unsupported file type; use .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of fields")
    return data


def describe_errors(source: str, exc: ValidationError, model: type[BaseModel]) -> str:
    """Turn a pydantic error into lines of 'file: field = value: problem (fix)'."""
    lines = [f"{source}: {exc.error_count()} invalid field(s)"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        msg = err["msg"]
        fix = ""
        if err["type"] == "extra_forbidden":
            known = _known_fields(model, err["loc"][:-1])
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
            msg = "unknown field"
        elif err["type"] == "missing":
            fix = "add it"
        shown = "" if err["type"] in ("missing",) else f" = {value!r}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {field}{shown}: {msg}" + (f" ({fix})" if fix else ""))
    return "\n".join(lines)


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: type[BaseModel] = model
    for part in loc:
        field = current.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        current = ann
    return sorted(current.model_fields)


def parse(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate ``data`` as ``model``; a failure becomes a :class:`ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(source, exc, model)) from exc


def load(model: type[M], path: Path) -> M:
    """Read and validate a TOML or YAML file as ``model``."""
    return parse(model, read_mapping(path), str(path))


@overload
def anchored(path: Path, base: Path) -> Path: ...
@overload
def anchored(path: None, base: Path) -> None: ...
@overload
def anchored(path: Path | None, base: Path) -> Path | None: ...
def anchored(path: Path | None, base: Path) -> Path | None:
    """``path`` relative to ``base`` when it is relative; absolute paths and None unchanged."""
    return path if path is None or path.is_absolute() else base / path


def anchor_fields(model: F, fields: tuple[str, ...], base: Path) -> F:
    """A copy of ``model`` with its path ``fields`` anchored at ``base`` (see :func:`anchored`)."""
    return model.model_copy(update={k: anchored(getattr(model, k), base) for k in fields})
