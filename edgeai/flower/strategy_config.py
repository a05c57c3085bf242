"""``[strategy]``: which of Flower's aggregation strategies a run uses, with its options.

Each name maps to a strategy of ``flwr.serverapp.strategy`` and the options it takes are
that class's own constructor arguments, spelled as Flower spells them. The run-level
arguments (fractions, minimum nodes, the weighting key) come from ``[federation]``;
``eta_l`` (FedOpt's client learning rate) is ``[training] learning_rate``.

Everything here is checked when the experiment is read, so a bad combination fails
``edgeai simulate`` (exit 2) and ``edgeai server run`` before anything starts.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import Field, model_validator

from edgeai.configfile import Frozen
from edgeai.errors import ConfigError

# name -> the options it takes (Flower's constructor arguments we pass through).
STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {
    "fedavg": (),
    "fedavgm": ("server_learning_rate", "server_momentum"),
    "fedprox": ("proximal_mu",),
    "fedadam": ("eta", "beta_1", "beta_2", "tau"),
    "fedyogi": ("eta", "beta_1", "beta_2", "tau"),
    "fedadagrad": ("eta", "tau"),
    "fedmedian": (),
    "fedtrimmedavg": ("beta",),
    "krum": ("num_malicious_nodes",),
    "multikrum": ("num_malicious_nodes", "num_nodes_to_select"),
    "bulyan": ("num_malicious_nodes",),
}
STRATEGY_NAMES = tuple(STRATEGY_OPTIONS)
# Options that exist in Flower but are ours elsewhere: where to set them instead.
ELSEWHERE = {
    "eta_l": "the clients' learning rate is training.learning_rate",
    "fraction_train": "clients per round are federation.clients_per_round",
    "min_train_nodes": "clients per round are federation.clients_per_round",
    "min_available_nodes": "the fleet size is federation.num_clients",
}


class StrategyConfig(Frozen):
    """``[strategy]``: the name and the options of that strategy (Flower's defaults else)."""

    name: str = "fedavg"
    server_learning_rate: float | None = Field(default=None, gt=0)
    server_momentum: float | None = Field(default=None, ge=0, lt=1)
    proximal_mu: float | None = Field(default=None, ge=0)
    eta: float | None = Field(default=None, gt=0)
    beta_1: float | None = Field(default=None, ge=0, lt=1)
    beta_2: float | None = Field(default=None, ge=0, lt=1)
    tau: float | None = Field(default=None, gt=0)
    beta: float | None = Field(default=None, ge=0, lt=0.5)
    num_malicious_nodes: int | None = Field(default=None, ge=0)
    num_nodes_to_select: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _name_and_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("name", "fedavg")
        if name not in STRATEGY_OPTIONS:
            close = difflib.get_close_matches(str(name), STRATEGY_NAMES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"strategy.name = {name!r}: unknown strategy; {hint}"
                f"choose one of: {', '.join(STRATEGY_NAMES)}"
            )
        takes = STRATEGY_OPTIONS[name]
        for key in data:
            if key == "name" or key in takes:
                continue
            where = ELSEWHERE.get(key)
            if where is None:
                close = difflib.get_close_matches(key, takes, n=1)
                where = f"did you mean {close[0]!r}?" if close else ""
            listed = ", ".join(takes) if takes else "no options"
            raise ConfigError(
                f"strategy.{key}: {name} does not take {key!r} (it takes {listed}); "
                f"remove it{'; ' + where if where else ''}"
            )
        return data

    def options(self) -> dict[str, float | int]:
        """The options given, as keyword arguments of the Flower strategy."""
        return {
            k: v
            for k in STRATEGY_OPTIONS[self.name]
            if (v := getattr(self, k)) is not None  # unset: Flower's default
        }

    @property
    def malicious(self) -> int:
        """``f`` of the Krum family: the malicious nodes per round it must withstand."""
        return self.num_malicious_nodes or 0

    @property
    def mu(self) -> float:
        """FedProx's proximal weight μ (0 for every other strategy)."""
        return self.proximal_mu or 0.0  # only fedprox takes the option

    def faulty_left(self, removed: int = 0) -> int:
        """``f`` among the valid replies, once ``removed`` faulty replies were taken out.

        In the Byzantine model a reply that failed validation or crashed came from one of
        the (at most f) faulty nodes, so at most ``f - removed`` faulty ones remain. Without
        this, Bulyan with f = 10 of 50 skips every round once 10 NaN replies are rejected
        (40 < 4f + 3): the model never moves.
        """
        return max(0, self.malicious - removed)

    def min_replies(self, removed: int = 0) -> int:
        """The fewest valid replies a round needs for the strategy's guarantee (1 if none)."""
        f = self.faulty_left(removed)
        if self.name in ("krum", "multikrum"):
            return 2 * f + 3  # Blanchard et al. 2017: n > 2f + 2
        if self.name == "bulyan":
            return 4 * f + 3  # El Mhamdi et al. 2018: n ≥ 4f + 3
        return 1

    def check_round_size(self, per_round: int, where: str = "strategy") -> None:
        """Refuse a round of ``per_round`` clients too small for the strategy.

        Raises
        ------
        ConfigError
            Naming the option, the rule and the fix.
        """
        need = self.min_replies()
        if per_round < need:
            rule = "4f + 3" if self.name == "bulyan" else "2f + 3"
            raise ConfigError(
                f"{where}.num_malicious_nodes = {self.malicious}: {self.name} needs at least "
                f"{rule} = {need} clients per round, but a round has {per_round}; raise "
                "federation.clients_per_round or lower num_malicious_nodes"
            )
        select = self.num_nodes_to_select
        if self.name == "multikrum" and select is not None and select > per_round - self.malicious:
            raise ConfigError(
                f"{where}.num_nodes_to_select = {select}: multikrum keeps at most clients "
                f"per round - f = {per_round - self.malicious}; lower it"
            )


def check_strategy(strategy: StrategyConfig, per_round: int, client_level_dp: bool) -> None:
    """Refuse a strategy that cannot run with these clients per round, or with client-level DP.

    Raises
    ------
    ConfigError
        Naming the option and the fix.
    """
    if client_level_dp and strategy.name != "fedavg":
        # ClientLevelDPFedAvg clips, sums and noises the updates itself (DP-FedAvg): a
        # median or a Krum selection of the noised sum would void its sensitivity bound.
        raise ConfigError(
            f"strategy.name = {strategy.name!r}: client-level DP (central_privacy) runs "
            "with fedavg only; use strategy.name = 'fedavg' or disable central_privacy "
            "(device-level DP-SGD, privacy.enabled, works with every strategy)"
        )
    strategy.check_round_size(per_round)
