"""Client-level (central) differential privacy on the server.

The server clips each client's model update to a global L2 norm ``clip_norm``
(C), sums the clipped updates, adds Gaussian noise of standard deviation
``noise_multiplier * clip_norm`` (zC) to the sum and divides by the number of
clients it *sampled*, not the number that replied.  A fixed denominator keeps
the noise calibration independent of who drops out: a dropout lowers the
signal, never the noise.

Neighbouring relations, which the accountant must match:

- Poisson sampling (each client joins a round with probability q): add/remove
  one client; the sum changes by at most C, so the RDP noise multiplier is z.
- fixed-size sampling (m of n clients, without replacement): replace one
  client; the sum changes by at most 2C, so the effective multiplier is z / 2.

The array functions are pure; :class:`ClientLevelAccountant` is the one small
stateful wrapper, over Google's ``dp_accounting``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, cast

import numpy as np
from numpy.typing import NDArray

from edgeai.errors import PrivacyError
from edgeai.privacy.accounting import RDP_ORDERS
from edgeai.privacy.ledger import check_delta, check_session

log = logging.getLogger(__name__)

Update = Mapping[str, NDArray[Any]]
FloatArrays = dict[str, NDArray[np.float64]]
Sampling = Literal["poisson", "fixed"]
SAMPLINGS: tuple[Sampling, ...] = ("poisson", "fixed")
_MAX_POPULATION = 10**7  # fixed-size sampling: q = m / n is recovered with n up to this


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise PrivacyError(f"{name} must be a positive finite number; got {value}")
    return float(value)


def _floating(update: Update, where: str) -> None:
    for key, arr in update.items():
        if not np.issubdtype(np.asarray(arr).dtype, np.floating):
            raise PrivacyError(
                f"{where}: array {key!r} has dtype {np.asarray(arr).dtype}; client-level DP "
                "needs floating-point updates; leave integer buffers (e.g. num_batches_tracked) "
                "out of the update"
            )


def update_norm(update: Update) -> float:
    """Global L2 norm over every array of ``update``.

    Parameters
    ----------
    update
        Arrays by name (a model update or delta).

    Returns
    -------
    float
        ``sqrt(sum of squares)``; NaN if any entry is NaN, inf if any is infinite.
        Computed on a rescaled copy so that huge entries do not overflow.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in update.values()]
    if not arrays or all(a.size == 0 for a in arrays):
        return 0.0
    if not all(np.isfinite(a).all() for a in arrays):
        return math.nan if any(np.isnan(a).any() for a in arrays) else math.inf
    scale = max(float(np.max(np.abs(a))) for a in arrays if a.size)
    if scale == 0.0:
        return 0.0
    return scale * math.sqrt(sum(float(np.sum(np.square(a / scale))) for a in arrays))


def clip_update(update: Update, clip_norm: float) -> tuple[FloatArrays, bool]:
    """Scale ``update`` down to global norm ``clip_norm`` if it is longer.

    Parameters
    ----------
    update
        Floating-point arrays by name; must be finite.
    clip_norm
        The bound C (> 0).

    Returns
    -------
    tuple
        The clipped arrays (float64 copies) and whether clipping changed them.
        A zero update stays zero.
    """
    clip_norm = _positive("clip_norm", clip_norm)
    _floating(update, "clip_update")
    norm = update_norm(update)
    if not math.isfinite(norm):
        raise PrivacyError(
            "cannot clip an update with NaN or infinite values; drop it (aggregate_with_noise "
            "counts such updates as rejected) or fix the client that sent it"
        )
    factor = clip_norm / norm if norm > clip_norm else 1.0
    return {k: np.asarray(a, dtype=np.float64) * factor for k, a in update.items()}, factor < 1.0


@dataclass(frozen=True)
class NoisyAggregate:
    """The noised mean of clipped updates, and what happened on the way."""

    arrays: dict[str, NDArray[Any]]  # same names, shapes and dtypes as the updates
    included: int  # updates that went into the sum
    clipped: int  # ... of which were scaled down to the clip norm
    rejected: int  # non-finite updates left out (treated as dropouts)
    noise_std: float  # standard deviation of the noise on each coordinate of the mean


def aggregate_with_noise(
    updates: Sequence[Update],
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: int,
    rng: np.random.Generator,
) -> NoisyAggregate:
    """Clip each update, sum, add N(0, (zC)²) noise, divide by ``expected_clients``.

    Parameters
    ----------
    updates
        The replies' updates; all with the same names and shapes.
    clip_norm
        C, the global L2 bound of one client's contribution.
    noise_multiplier
        z; the noise on the sum has standard deviation z·C (0 turns the noise off).
    expected_clients
        m, the fixed denominator: the *expected* number of clients per round (q·N
        under Poisson sampling, where a round may sample more or fewer).
    rng
        The source of the noise.

    Returns
    -------
    NoisyAggregate
        The noised mean and counts.

    Notes
    -----
    An update with a NaN or infinite value is *not* propagated: it is left out
    of the sum before clipping, counted in ``rejected`` and logged, exactly as if
    that client had dropped out.  Privacy is unaffected (its contribution is
    replaced by zero, within the sensitivity bound), and the denominator stays m.
    """
    clip_norm = _positive("clip_norm", clip_norm)
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyError(f"noise_multiplier must be >= 0 and finite; got {noise_multiplier}")
    if not updates:
        raise PrivacyError("no updates to aggregate; skip the round when no client replied")
    if expected_clients < 1:
        raise PrivacyError(f"expected_clients must be >= 1; got {expected_clients}")
    ref = updates[0]
    for i, upd in enumerate(updates):
        _floating(upd, f"update {i}")
        if upd.keys() != ref.keys() or any(np.shape(upd[k]) != np.shape(ref[k]) for k in ref):
            raise PrivacyError(
                f"update {i} does not match update 0 in names or shapes; validate replies "
                "against the global model before aggregating"
            )
    total = {k: np.zeros(np.shape(a), dtype=np.float64) for k, a in ref.items()}
    included = clipped = rejected = 0
    for upd in updates:
        if not math.isfinite(update_norm(upd)):
            rejected += 1
            continue
        arrays, was_clipped = clip_update(upd, clip_norm)
        for k, a in arrays.items():
            total[k] += a
        included += 1
        clipped += was_clipped
    if rejected:
        log.warning("left %d non-finite update(s) out of the noisy aggregate", rejected)
    std = noise_multiplier * clip_norm
    if std > 0:
        for a in total.values():
            np.add(a, rng.normal(0.0, std, size=a.shape), out=a)
    arrays_out = {
        k: (a / expected_clients).astype(np.asarray(ref[k]).dtype) for k, a in total.items()
    }
    return NoisyAggregate(arrays_out, included, clipped, rejected, std / expected_clients)


History = list[tuple[float, float, int]]


class ClientLevelAccountant:
    """RDP accounting of client-level DP with sampling amplification (``dp_accounting``).

    The history is a list of ``(noise_multiplier, sample_rate, rounds)``, the same
    shape as a DP-SGD history (rounds in place of steps), so the privacy ledger
    can store it.  ``noise_multiplier`` is z as passed to
    :func:`aggregate_with_noise`; for fixed-size sampling ``sample_rate`` is m / n
    and the accountant applies the replace-one sensitivity 2C itself.
    """

    def __init__(self, sampling: Sampling = "poisson", history: Iterable[Sequence[float]] = ()):
        if sampling not in SAMPLINGS:
            raise PrivacyError(f"unknown sampling {sampling!r}; choose one of {SAMPLINGS}")
        self.sampling: Sampling = sampling
        self._history: History = []
        for entry in history:
            if len(entry) != 3:
                raise PrivacyError(f"history entries are (σ, q, rounds); got {entry!r}")
            self.step(float(entry[0]), float(entry[1]), int(entry[2]))

    @property
    def history(self) -> History:
        """``(noise_multiplier, sample_rate, rounds)`` entries, oldest first (a copy)."""
        return list(self._history)

    def step(self, noise_multiplier: float, sample_rate: float, rounds: int = 1) -> None:
        """Account ``rounds`` releases of the noisy aggregate at (z, q)."""
        sigma, q, rounds = check_session(noise_multiplier, sample_rate, rounds, "rounds")
        self._event(sigma, q)  # fails early on an unusable q
        if rounds == 0:
            return
        if self._history and self._history[-1][:2] == (sigma, q):
            rounds += self._history.pop()[2]
        self._history.append((sigma, q, rounds))

    def _event(self, sigma: float, q: float) -> Any:
        dp_accounting = _dp_accounting()
        if self.sampling == "poisson":
            return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        frac = Fraction(q).limit_denominator(_MAX_POPULATION)
        if float(frac) != q:  # m / n in floating point maps back to exactly m / n
            raise PrivacyError(
                f"fixed-size sampling needs sample_rate = clients per round / population; "
                f"{q} is not such a ratio with population <= {_MAX_POPULATION}"
            )
        return dp_accounting.SampledWithoutReplacementDpEvent(
            frac.denominator, frac.numerator, dp_accounting.GaussianDpEvent(sigma / 2)
        )

    def _fresh(self) -> Any:
        dp_accounting = _dp_accounting()
        relation = dp_accounting.NeighboringRelation
        return dp_accounting.rdp.RdpAccountant(
            list(RDP_ORDERS),
            relation.ADD_OR_REMOVE_ONE if self.sampling == "poisson" else relation.REPLACE_ONE,
        )

    def _composed(self, extra: History) -> Any:
        dp_accounting = _dp_accounting()
        return dp_accounting.ComposedDpEvent(
            [
                dp_accounting.SelfComposedDpEvent(self._event(s, q), n)
                for s, q, n in [*self._history, *extra]
            ]
        )

    def _epsilon_with(self, extra: History, delta: float) -> float:
        entries = [*self._history, *extra]
        if not entries:
            return 0.0
        if any(s == 0 for s, _, _ in entries):
            return math.inf
        return float(self._fresh().compose(self._composed(extra)).get_epsilon(delta))

    def epsilon(self, delta: float) -> float:
        """ε at ``delta`` after every round so far (0 before the first)."""
        check_delta(delta)
        return self._epsilon_with([], delta)

    def noise_for_target(
        self, target_epsilon: float, delta: float, sample_rate: float, rounds: int
    ) -> float:
        """The smallest z for ``rounds`` more rounds at ``sample_rate`` keeping ε ≤ target.

        What has already been spent (the history) counts against the target.
        """
        dp_accounting = _dp_accounting()
        check_delta(delta)
        _positive("target_epsilon", target_epsilon)
        if rounds < 1:
            raise PrivacyError(f"rounds must be >= 1; got {rounds}")
        spent = self.epsilon(delta)
        if spent >= target_epsilon:
            raise PrivacyError(
                f"ε = {spent:.4g} is already spent at δ = {delta}, at or above the target "
                f"{target_epsilon}; raise the target or stop training"
            )
        self._event(1.0, sample_rate)  # validates q for fixed-size sampling

        def gap(z: float) -> float:
            return self._epsilon_with([(z, sample_rate, rounds)], delta) - target_epsilon

        hi = 1.0
        while gap(hi) > 0:
            hi *= 2
            if hi > 1e6:
                raise PrivacyError(f"no noise multiplier up to 1e6 reaches ε = {target_epsilon}")
        lo = hi / 2
        while gap(lo) <= 0:
            if lo < 1e-3:
                return lo  # almost no noise is needed
            hi, lo = lo, lo / 2

        def event(z: float) -> Any:
            return self._composed([(z, sample_rate, rounds)])

        return float(
            dp_accounting.calibrate_dp_mechanism(
                self._fresh,
                event,
                target_epsilon,
                delta,
                dp_accounting.ExplicitBracketInterval(lo, hi),
                tol=1e-4 * hi,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready) from which :meth:`from_dict` rebuilds the accountant."""
        return {
            "version": 1,
            "sampling": self.sampling,
            "history": [list(h) for h in self._history],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientLevelAccountant:
        """Rebuild an accountant saved with :meth:`to_dict`."""
        if data.get("version") != 1:
            raise PrivacyError(f"unsupported accountant state version {data.get('version')!r}")
        return cls(cast(Sampling, data.get("sampling")), data.get("history", []))


def _dp_accounting() -> Any:
    # Imported on first use: it pulls in scipy and mpmath, which the inference-only
    # install has no need for.
    import dp_accounting  # noqa: PLC0415  (ships no types)

    # dp_accounting logs (through absl) every RDP order it drops as non-convergent;
    # dropping an order only loosens the bound, so these are not worth a user's attention.
    logging.getLogger("absl").setLevel(logging.ERROR)

    return dp_accounting
