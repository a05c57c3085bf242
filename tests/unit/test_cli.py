from pathlib import Path

from typer.testing import CliRunner

from edgeai import __version__
from edgeai.cli import app

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "profiles", "version"):
        assert command in result.output


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def _simulate(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["simulate", str(path), "--out", str(tmp_path / "out")])
    return result.exit_code, result.output


def test_malformed_experiment_exits_2_naming_the_field(tmp_path: Path) -> None:
    code, output = _simulate(
        tmp_path,
        'name = "x"\n[model]\nname = "dp-cnn"\n[federation]\nnum_clients = 0\nrounds = 1\n',
    )
    assert code == 2
    assert "federation.num_clients" in output
    assert not (tmp_path / "out").exists()


def test_unknown_model_exits_2(tmp_path: Path) -> None:
    code, output = _simulate(
        tmp_path, 'name = "x"\n[model]\nname = "gpt"\n[federation]\nnum_clients = 2\nrounds = 1\n'
    )
    assert code == 2
    assert "unknown model 'gpt'" in output


def test_missing_data_file_exits_2(tmp_path: Path) -> None:
    code, output = _simulate(
        tmp_path,
        'name = "x"\n[model]\nname = "dp-cnn"\n[data]\ndataset = "gone.npz"\n'
        "[federation]\nnum_clients = 2\nrounds = 1\n",
    )
    assert code == 2
    assert "gone.npz" in output
    assert "no such file" in output


def test_missing_experiment_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "no such file" in result.output
