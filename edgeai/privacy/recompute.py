"""Recompute a run's device-level ε with another library than the one that spent it.

A run's ``summary.json`` carries a ``privacy`` object (DESIGN.md §5): ``noise_multiplier``
σ, ``sample_rate`` q, ``steps``, ``delta``, ``epsilon`` and the ``accountant`` (Opacus'
``rdp`` or ``prv``). Here Google's ``dp-accounting`` composes the same mechanism —
``steps`` Poisson-subsampled Gaussians, add/remove-one neighbours — with its RDP
accountant for an RDP run and its privacy-loss-distribution (PLD) accountant for a PRV
run (PRV and PLD both compute the exact privacy curve numerically, up to discretization).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeai.errors import PrivacyError
from edgeai.privacy.accounting import RDP_ORDERS

# PLD's discretization of the privacy loss: 1e-4 puts ε within 1e-3 relative of the
# limit (checked against 1e-5 on the dp-eps1 run) in a fraction of a second.
PLD_INTERVAL = 1e-4


@dataclass(frozen=True)
class Recomputed:
    """ε as recorded by the run and as recomputed here."""

    recorded: float
    recomputed: float
    method: str

    @property
    def relative_difference(self) -> float:
        """|recorded - recomputed| / recomputed."""
        return abs(self.recorded - self.recomputed) / self.recomputed


def _number(privacy: Mapping[str, Any], key: str) -> float:
    value = privacy.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PrivacyError(f"the privacy object needs a finite number {key!r}; got {value!r}")
    return float(value)


def recompute_epsilon(privacy: Mapping[str, Any]) -> Recomputed:
    """ε of a summary's ``privacy`` object, recomputed with ``dp-accounting``."""
    import dp_accounting  # noqa: PLC0415  (train extra)
    from dp_accounting.pld import pld_privacy_accountant  # noqa: PLC0415
    from dp_accounting.rdp import rdp_privacy_accountant  # noqa: PLC0415

    sigma, q = _number(privacy, "noise_multiplier"), _number(privacy, "sample_rate")
    steps, delta = int(_number(privacy, "steps")), _number(privacy, "delta")
    if not (sigma > 0 and 0 < q <= 1 and steps >= 1 and 0 < delta < 1):
        raise PrivacyError(f"not a DP-SGD session: σ={sigma}, q={q}, steps={steps}, δ={delta}")
    if privacy.get("poisson_sampling") is False:
        raise PrivacyError("only Poisson-sampled DP-SGD is recomputed (the run says it was not)")
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant = str(privacy.get("accountant", "rdp"))
    if accountant == "prv":
        pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
        epsilon, method = pld.compose(event).get_epsilon(delta), "dp-accounting PLD"
    elif accountant == "rdp":
        rdp = rdp_privacy_accountant.RdpAccountant(list(RDP_ORDERS))
        epsilon, method = rdp.compose(event).get_epsilon(delta), "dp-accounting RDP"
    else:
        raise PrivacyError(f"unknown accountant {accountant!r}; a run records 'rdp' or 'prv'")
    return Recomputed(_number(privacy, "epsilon"), float(epsilon), method)
