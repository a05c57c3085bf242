from pathlib import Path

import pytest

from edgeai.errors import ConfigError
from edgeai.flower.experiment import Experiment, load_experiment

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "simulations").glob("*.toml"))

MINIMAL = """
name = "t"
[model]
name = "dp-cnn"
[federation]
num_clients = 4
rounds = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_experiments_validate(path: Path) -> None:
    exp = load_experiment(path)
    assert exp.federation.per_round <= exp.federation.num_clients


def test_required_experiments_are_shipped() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"quickstart", "fedavg-cnn-iid", "fedavg-cnn-2labels"} <= names
    assert {"dp-eps1", "dp-eps3", "dp-eps8", "dp-nodp"} <= names


def test_minimal_experiment_gets_defaults(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, MINIMAL))
    assert exp.federation.per_round == 4
    assert exp.data.dataset == "mnist"
    assert not exp.privacy.enabled


def test_typo_names_file_field_and_suggests_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("rounds = 2", "rounds = 2\nround = 3"))
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    text = str(info.value)
    assert str(path) in text
    assert "federation.round" in text
    assert "did you mean 'rounds'" in text


@pytest.mark.parametrize(
    ("patch", "field", "fragment"),
    [
        (
            "[federation]\nnum_clients = 4\nrounds = 0",
            "federation.rounds",
            "greater than or equal to 1",
        ),
        (
            "[federation]\nnum_clients = 4\nrounds = 2\nclients_per_round = 9",
            "federation",
            "exceeds num_clients",
        ),
        (
            "[federation]\nnum_clients = 4\nrounds = 2\n"
            "clients_per_round = 2\nfraction_per_round = 0.5",
            "federation",
            "not both",
        ),
        ("[federation]\nnum_clients = 4\nrounds = 'many'", "federation.rounds", "valid integer"),
    ],
)
def test_bad_federation_settings(tmp_path: Path, patch: str, field: str, fragment: str) -> None:
    text = MINIMAL.replace("[federation]\nnum_clients = 4\nrounds = 2", patch)
    with pytest.raises(ConfigError) as info:
        load_experiment(write(tmp_path, text))
    assert field in str(info.value)
    assert fragment in str(info.value)


def test_contradictory_privacy_settings(tmp_path: Path) -> None:
    text = MINIMAL + "[privacy]\nenabled = true\nnoise_multiplier = 1.0\ntarget_epsilon = 3.0\n"
    with pytest.raises(ConfigError, match="contradict"):
        load_experiment(write(tmp_path, text))
    text = MINIMAL + "[privacy]\nenabled = true\n"
    with pytest.raises(ConfigError, match="neither noise_multiplier nor target_epsilon"):
        load_experiment(write(tmp_path, text))


def test_unknown_model_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"model\.name.*choose one of: dp-cnn, dp-cnn-tiny, fedavg-2nn, fedavg-cnn",
    ):
        load_experiment(write(tmp_path, MINIMAL.replace('"dp-cnn"', '"resnet50"')))


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    text = MINIMAL + '[data]\ndataset = "mine.npz"\n'
    with pytest.raises(ConfigError, match=r"data.dataset = 'mine.npz': no such file"):
        load_experiment(write(tmp_path, text))


def test_relative_data_path_resolves_beside_the_file(tmp_path: Path) -> None:
    (tmp_path / "mine.npz").write_bytes(b"")
    exp = load_experiment(write(tmp_path, MINIMAL + '[data]\ndataset = "mine.npz"\n'))
    assert exp.data.dataset == str(tmp_path / "mine.npz")


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(path)


def test_partition_options_of_another_kind_are_contradictory(tmp_path: Path) -> None:
    text = MINIMAL + '[data.partition]\nkind = "iid"\nalpha = 0.5\n'
    with pytest.raises(ConfigError, match="alpha applies only to kind = 'dirichlet'"):
        load_experiment(write(tmp_path, text))


def test_overrides_apply_dotted_fields(tmp_path: Path) -> None:
    exp = load_experiment(write(tmp_path, MINIMAL), {"federation.rounds": 7})
    assert exp.federation.rounds == 7


def test_config_is_immutable() -> None:
    exp = Experiment.model_validate(
        {"name": "x", "model": {"name": "dp-cnn"}, "federation": {"num_clients": 2, "rounds": 1}}
    )
    with pytest.raises(ValueError, match="frozen"):
        exp.name = "y"  # type: ignore[misc]
