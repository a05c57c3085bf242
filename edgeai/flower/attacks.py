"""``[attack]``: poisoned clients in simulation, as pure functions on arrays and labels.

A fixed share of the virtual clients (chosen once per run from the experiment's seed) is
hostile. The entry point is :class:`AttackPlan`, built from the config, the number of
clients and the seed; any backend that trains clients asks it, per client:

- :meth:`AttackPlan.attacks` — is this client (its partition id) an attacker?
- :meth:`AttackPlan.poison_labels` — the labels it trains on (``label-flip`` only);
- :meth:`AttackPlan.poison_update` — the weights it replies with, from the round's global
  weights and its honestly trained ones (``sign-flip``, ``scale``, ``noise``, ``nan``).

Honest clients get their inputs back unchanged, so a caller can apply both to everyone.
Updates are poisoned as deltas from the global model ``g``: with ``l`` the local weights,

- ``sign-flip``: ``g - factor·(l - g)`` (factor 4 by default: a plain flip, factor 1, only
  shrinks a 20 % minority's pull on the mean to 0.6 and slows FedAvg instead of wrecking it);
- ``scale``: ``g + factor·(l - g)`` (x10: model replacement, Bagdasaryan et al. 2020);
- ``noise``: ``g + N(0, noise_std²)`` per weight (the honest update is thrown away);
- ``nan``: every float weight NaN (reply validation must reject it);
- ``label-flip``: label ``y`` becomes ``classes - 1 - y`` before training.

Integer arrays (counters such as BatchNorm's ``num_batches_tracked``) are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import field_validator, model_validator

from edgeai.configfile import Frozen
from edgeai.errors import ConfigError

AttackKind = Literal["sign-flip", "scale", "label-flip", "noise", "nan"]
DEFAULT_FACTOR = {"sign-flip": 4.0, "scale": 10.0}
DEFAULT_NOISE_STD = 1.0
Arrays = Mapping[str, NDArray[Any]]


class AttackConfig(Frozen):
    """``[attack]``: what the hostile clients do and what share of the clients they are."""

    kind: AttackKind
    fraction: float = 0.2
    factor: float | None = None  # sign-flip and scale: the multiple of the honest update
    noise_std: float | None = None  # noise: the standard deviation of the weights sent

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ConfigError(
                f"attack.fraction = {value}: must be in [0, 1) (the share of clients that "
                "attack: 0.2 is one in five); set it below 1"
            )
        return value

    @model_validator(mode="after")
    def _options(self) -> AttackConfig:
        if self.factor is not None and self.kind not in DEFAULT_FACTOR:
            raise ConfigError(
                f"attack.factor applies to kind = 'sign-flip' or 'scale', not {self.kind!r}; "
                "remove it"
            )
        if self.noise_std is not None and (self.kind != "noise" or self.noise_std <= 0):
            raise ConfigError(
                "attack.noise_std applies to kind = 'noise' only and must be > 0; fix or remove it"
            )
        return self


def attackers(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """The partition ids of the ``round(fraction · num_clients)`` attackers, fixed by ``seed``."""
    count = round(fraction * num_clients)
    order = np.random.default_rng([seed % 2**63, 0xA77AC]).permutation(num_clients)
    return frozenset(int(i) for i in order[:count])


def _floats(arrays: Arrays) -> list[str]:
    return [k for k, a in arrays.items() if np.issubdtype(a.dtype, np.floating)]


def scaled_update(global_: Arrays, local: Arrays, factor: float) -> dict[str, NDArray[Any]]:
    """``g + factor·(l - g)`` for float arrays (negative ``factor``: a sign flip)."""
    out = {k: np.array(v, copy=True) for k, v in local.items()}
    for k in _floats(local):
        g = np.asarray(global_[k], dtype=np.float64)
        out[k] = (g + factor * (np.asarray(local[k], np.float64) - g)).astype(local[k].dtype)
    return out


def noise_update(
    global_: Arrays, local: Arrays, std: float, rng: np.random.Generator
) -> dict[str, NDArray[Any]]:
    """``g + N(0, std²)`` for float arrays: the honest update is replaced by noise."""
    out = {k: np.array(v, copy=True) for k, v in local.items()}
    for k in _floats(local):
        g = np.asarray(global_[k])
        out[k] = (g + rng.normal(0.0, std, size=g.shape)).astype(local[k].dtype)
    return out


def nan_update(local: Arrays) -> dict[str, NDArray[Any]]:
    """Every float array full of NaN."""
    out = {k: np.array(v, copy=True) for k, v in local.items()}
    for k in _floats(local):
        out[k] = np.full_like(local[k], np.nan)
    return out


def flip_labels(y: NDArray[np.integer[Any]], classes: int) -> NDArray[np.integer[Any]]:
    """Label ``y`` becomes ``classes - 1 - y`` (0 ↔ 9 for the ten digits)."""
    return (classes - 1 - y).astype(y.dtype)


@dataclass(frozen=True)
class AttackPlan:
    """Who attacks in a run and how; the one entry point of a training backend."""

    config: AttackConfig | None
    attacker_ids: frozenset[int]
    seed: int = 0

    @classmethod
    def of(cls, config: AttackConfig | None, num_clients: int, seed: int) -> AttackPlan:
        """The plan of a run: ``config`` (None: nobody attacks) over ``num_clients``."""
        if config is None:
            return cls(None, frozenset(), seed)
        return cls(config, attackers(num_clients, config.fraction, seed), seed)

    def attacks(self, client: int) -> bool:
        """Whether the client with partition id ``client`` is hostile."""
        return self.config is not None and client in self.attacker_ids

    def poison_labels(
        self, client: int, y: NDArray[np.integer[Any]], classes: int
    ) -> NDArray[np.integer[Any]]:
        """The labels ``client`` trains on: flipped for a label-flipping attacker."""
        if self.config is None or self.config.kind != "label-flip" or not self.attacks(client):
            return y
        return flip_labels(y, classes)

    def poison_update(
        self, client: int, server_round: int, global_: Arrays, local: Arrays
    ) -> Arrays:
        """The weights ``client`` replies with in ``server_round`` (``local`` if honest)."""
        cfg = self.config
        if cfg is None or cfg.kind == "label-flip" or not self.attacks(client):
            return local
        if cfg.kind == "nan":
            return nan_update(local)
        if cfg.kind == "noise":
            rng = np.random.default_rng([self.seed % 2**63, server_round, client, 0x4015E])
            return noise_update(global_, local, cfg.noise_std or DEFAULT_NOISE_STD, rng)
        factor = cfg.factor if cfg.factor is not None else DEFAULT_FACTOR[cfg.kind]
        return scaled_update(global_, local, -factor if cfg.kind == "sign-flip" else factor)
