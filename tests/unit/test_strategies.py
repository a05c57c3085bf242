"""[strategy]: the config's checks, and Flower's aggregation behind our validation.

Each strategy's result is compared with a slow reference written from its paper, one
coordinate and one client at a time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeai.configfile import parse
from edgeai.errors import ConfigError
from edgeai.flower.aggregators import Aggregator
from edgeai.flower.attacks import AttackPlan
from edgeai.flower.strategy import ValidatingFedAvg
from edgeai.flower.strategy_config import STRATEGY_NAMES, StrategyConfig, check_strategy
from edgeai.flower.validation import reference_of

SHAPES = {"w": (3, 2), "b": (4,)}
SIZE = 10  # the two arrays, flat


def _reply(src: int, arrays: dict[str, np.ndarray], n: int = 10) -> Message:
    meta = Metadata(0, f"r{src}", src, 0, f"q{src}", "", 0.0, 0.0, "train")
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": n, "train-loss": 0.5}),
        }
    )
    return Message(metadata=meta, content=content)


def _updates(seed: int, n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {k: rng.normal(0, 1, s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(n)
    ]


def _flat(u: dict[str, np.ndarray]) -> list[float]:
    return [float(x) for k in sorted(u) for x in u[k].ravel()]


def _unflat(values: Sequence[float]) -> dict[str, np.ndarray]:
    out, i = {}, 0
    for k in sorted(SHAPES):
        size = math.prod(SHAPES[k])
        out[k] = np.array(values[i : i + size]).reshape(SHAPES[k])
        i += size
    return out


def _aggregate(cfg: StrategyConfig, ups: list[dict[str, np.ndarray]], weights=None):
    agg = Aggregator(cfg)
    agg.begin(ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()}))
    weights = weights or [10] * len(ups)
    out = agg.aggregate(
        1, [_reply(i + 1, u, w) for i, (u, w) in enumerate(zip(ups, weights, strict=True))]
    )
    return out, {k: v.numpy() for k, v in out.arrays.items()}


# -- slow references, one coordinate at a time ---------------------------------------------


def _ref_mean(vectors: list[list[float]], weights: list[float]) -> list[float]:
    total = sum(weights)
    return [
        sum(w * v[j] for v, w in zip(vectors, weights, strict=True)) / total
        for j in range(len(vectors[0]))
    ]


def _ref_median(vectors: list[list[float]]) -> list[float]:
    out = []
    for j in range(len(vectors[0])):
        col = sorted(v[j] for v in vectors)
        mid = len(col) // 2
        out.append(col[mid] if len(col) % 2 else (col[mid - 1] + col[mid]) / 2)
    return out


def _ref_trimmed(vectors: list[list[float]], beta: float) -> list[float]:
    cut = int(beta * len(vectors))
    out = []
    for j in range(len(vectors[0])):
        col = sorted(v[j] for v in vectors)[cut : len(vectors) - cut]
        out.append(sum(col) / len(col))
    return out


def _ref_krum_scores(vectors: list[list[float]], f: int) -> list[float]:
    # Blanchard et al. 2017: the sum of squared distances to the n - f - 2 closest others.
    n = len(vectors)
    scores = []
    for i in range(n):
        d = sorted(
            sum((a - b) ** 2 for a, b in zip(vectors[i], vectors[j], strict=True))
            for j in range(n)
            if j != i
        )
        scores.append(sum(d[: max(1, n - f - 2)]))
    return scores


def _close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float = 1e-5) -> bool:
    return all(np.allclose(a[k], b[k], atol=tol) for k in SHAPES)


# -- aggregation ----------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), n=st.integers(3, 9))
def test_mean_median_and_trimmed_mean_match_their_references(seed: int, n: int) -> None:
    ups = _updates(seed, n)
    vecs = [_flat(u) for u in ups]
    weights = [int(w) for w in np.random.default_rng(seed).integers(1, 50, n)]
    _, avg = _aggregate(StrategyConfig(name="fedavg"), ups, weights)
    assert _close(avg, _unflat(_ref_mean(vecs, weights)))
    _, med = _aggregate(StrategyConfig(name="fedmedian"), ups)
    assert _close(med, _unflat(_ref_median(vecs)))
    _, trim = _aggregate(StrategyConfig(name="fedtrimmedavg", beta=0.3), ups)
    assert _close(trim, _unflat(_ref_trimmed(vecs, 0.3)))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), extra=st.integers(0, 3), f=st.integers(0, 2))
def test_krum_and_multikrum_keep_the_best_scored_replies(seed: int, extra: int, f: int) -> None:
    n = 2 * f + 3 + extra  # Krum's n > 2f + 2 (fewer: scores over one neighbour tie)
    ups = _updates(seed, n)
    vecs = [_flat(u) for u in ups]
    order = sorted(range(n), key=_ref_krum_scores(vecs, f).__getitem__)
    out, krum = _aggregate(StrategyConfig(name="krum", num_malicious_nodes=f), ups)
    assert out.kept == (order[0] + 1,)  # node ids are 1-based here
    assert _close(krum, ups[order[0]])
    m = n - f
    out, multi = _aggregate(
        StrategyConfig(name="multikrum", num_malicious_nodes=f, num_nodes_to_select=m), ups
    )
    assert set(out.kept or ()) == {i + 1 for i in order[:m]}
    assert _close(multi, _unflat(_ref_mean([vecs[i] for i in order[:m]], [1.0] * m)))


def test_bulyan_trims_around_the_median_of_the_multikrum_selection() -> None:
    n, f = 11, 2
    ups = _updates(7, n)
    vecs = [_flat(u) for u in ups]
    theta = n - 2 * f
    chosen = sorted(range(n), key=_ref_krum_scores(vecs, f).__getitem__)[:theta]
    beta = theta - 2 * f
    ref = []
    for j in range(len(vecs[0])):
        col = [vecs[i][j] for i in chosen]
        med = _ref_median([[c] for c in col])[0]
        ref.append(sum(sorted(col, key=lambda c: abs(c - med))[:beta]) / beta)
    out, bul = _aggregate(StrategyConfig(name="bulyan", num_malicious_nodes=f), ups)
    assert set(out.kept or ()) == {i + 1 for i in chosen}
    assert _close(bul, _unflat(ref))


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_server_optimizers_match_reddi_et_al(name: str) -> None:
    # Reddi et al. 2021, Algorithm 2, two rounds from x = 0 (Flower's bias correction for Adam).
    eta, tau, b1, b2 = 0.05, 1e-3, 0.9, 0.99
    opts = {"eta": eta, "tau": tau} | ({"beta_1": b1, "beta_2": b2} if name != "fedadagrad" else {})
    agg = Aggregator(StrategyConfig(name=name, **opts))
    x = np.zeros(SIZE)
    m, v = np.zeros(SIZE), np.zeros(SIZE)
    beta_1 = 0.0 if name == "fedadagrad" else b1
    for rnd in (1, 2):
        ups = _updates(rnd, 4)
        agg.begin(ArrayRecord({k: Array(_unflat(list(x))[k].astype(np.float32)) for k in SHAPES}))
        out = agg.aggregate(rnd, [_reply(i + 1, u) for i, u in enumerate(ups)])
        delta = np.array(_ref_mean([_flat(u) for u in ups], [1.0] * 4)) - x
        m = beta_1 * m + (1 - beta_1) * delta
        if name == "fedadam":
            v = b2 * v + (1 - b2) * delta**2
            step = eta * math.sqrt(1 - b2 ** (rnd + 1)) / (1 - b1 ** (rnd + 1))
        elif name == "fedyogi":
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
            step = eta
        else:
            v = v + delta**2
            step = eta
        x = x + step * m / (np.sqrt(v) + tau)
        got = {k: a.numpy() for k, a in out.arrays.items()}
        assert _close(got, _unflat(list(x)), tol=1e-4)


def test_fedavgm_keeps_a_server_momentum() -> None:
    agg = Aggregator(StrategyConfig(name="fedavgm", server_momentum=0.5, server_learning_rate=2.0))
    x = np.zeros(SIZE)
    momentum = np.zeros(SIZE)
    for rnd in (1, 2, 3):
        ups = _updates(rnd, 3)
        agg.begin(ArrayRecord({k: Array(_unflat(list(x))[k].astype(np.float32)) for k in SHAPES}))
        out = agg.aggregate(rnd, [_reply(i + 1, u) for i, u in enumerate(ups)])
        grad = x - np.array(_ref_mean([_flat(u) for u in ups], [1.0] * 3))
        momentum = grad if rnd == 1 else 0.5 * momentum + grad
        x = x - 2.0 * momentum
        assert _close({k: a.numpy() for k, a in out.arrays.items()}, _unflat(list(x)), 1e-4)


def test_a_rejected_reply_never_reaches_the_strategy_and_attackers_are_named() -> None:
    ref = reference_of({k: np.zeros(s, np.float32) for k, s in SHAPES.items()})
    strategy = ValidatingFedAvg(
        reference=ref,
        max_examples=100,
        aggregator=Aggregator(StrategyConfig(name="krum", num_malicious_nodes=1)),
        attack=AttackPlan(None, frozenset()),
        fraction_train=1.0,
        min_train_nodes=1,
        min_available_nodes=1,
        fraction_evaluate=0.0,
    )
    ups = _updates(3, 6)
    ups[5] = {k: np.full(s, np.nan, np.float32) for k, s in SHAPES.items()}  # the NaN reply
    ups[4] = {k: np.full(s, 1e3, np.float32) for k, s in SHAPES.items()}  # far from the rest
    strategy.aggregator.begin(
        ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()})
    )
    new, _ = strategy.aggregate_train(1, [_reply(i + 1, u) for i, u in enumerate(ups)])
    stats = strategy.stats[1]
    assert stats.rejected == 1
    assert stats.accepted == 5
    assert "node-5" in stats.discarded
    assert "node-6" not in stats.discarded  # rejected by validation, never seen by Krum
    assert len(stats.discarded) == 4  # Krum keeps one of the five valid replies
    assert new is not None
    assert np.isfinite(new["w"].numpy()).all()


# -- the config -----------------------------------------------------------------------------


def _parse(data: dict[str, object]) -> StrategyConfig:
    return parse(StrategyConfig, data, "exp.toml")


def test_an_unknown_strategy_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"'fedavgg'.*did you mean 'fedavg'"):
        _parse({"name": "fedavgg"})
    with pytest.raises(ConfigError, match=r"'multi-krum'.*did you mean 'multikrum'"):
        _parse({"name": "multi-krum"})


def test_an_option_the_strategy_does_not_take_is_named_with_what_it_takes() -> None:
    with pytest.raises(
        ConfigError, match=r"strategy.proximal_mu: krum does not take.*num_malicious"
    ):
        _parse({"name": "krum", "proximal_mu": 0.1})
    with pytest.raises(ConfigError, match=r"eta_l.*training\.learning_rate"):
        _parse({"name": "fedadam", "eta_l": 0.1})
    with pytest.raises(ConfigError, match=r"did you mean 'num_malicious_nodes'"):
        _parse({"name": "bulyan", "num_malicious_node": 1})


@pytest.mark.parametrize(
    ("name", "f", "smallest"), [("krum", 2, 7), ("multikrum", 3, 9), ("bulyan", 2, 11)]
)
def test_the_krum_family_needs_enough_clients_per_round(name: str, f: int, smallest: int) -> None:
    cfg = StrategyConfig(name=name, num_malicious_nodes=f)
    cfg.check_round_size(smallest)
    with pytest.raises(ConfigError, match=rf"needs at least .* = {smallest} clients per round"):
        cfg.check_round_size(smallest - 1)


def test_multikrum_cannot_keep_more_than_n_minus_f() -> None:
    cfg = StrategyConfig(name="multikrum", num_malicious_nodes=2, num_nodes_to_select=9)
    with pytest.raises(ConfigError, match="keeps at most clients per round - f = 8"):
        cfg.check_round_size(10)


def test_client_level_dp_runs_with_fedavg_only() -> None:
    check_strategy(StrategyConfig(), 10, client_level_dp=True)
    with pytest.raises(ConfigError, match=r"client-level DP.*fedavg only"):
        check_strategy(StrategyConfig(name="fedmedian"), 10, client_level_dp=True)


def test_every_strategy_builds_with_flowers_defaults_and_passes_only_given_options() -> None:
    for name in STRATEGY_NAMES:
        Aggregator(StrategyConfig(name=name))
    cfg = StrategyConfig(name="fedtrimmedavg", beta=0.1)
    assert cfg.options() == {"beta": 0.1}
    assert Aggregator(cfg).flower.beta == 0.1  # type: ignore[union-attr]
    assert StrategyConfig(name="fedprox", proximal_mu=0.3).mu == 0.3
    assert StrategyConfig(name="fedavg").mu == 0.0
    assert list(itertools.islice(STRATEGY_NAMES, 1)) == ["fedavg"]


def test_bulyan_neither_empties_the_replies_nor_collects_the_heap_per_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Flower's Bulyan calls ArrayRecord.to_numpy_ndarrays(keep_input=False) per selected
    # reply, which pops the arrays and runs gc.collect() (flwr/app/message/arrayrecord.py).
    collections = []
    monkeypatch.setattr("gc.collect", lambda *a: collections.append(a) or 0)
    ups = _updates(5, 11)
    replies = [_reply(i + 1, u) for i, u in enumerate(ups)]
    agg = Aggregator(StrategyConfig(name="bulyan", num_malicious_nodes=2))
    out = agg.aggregate(1, replies)
    assert out.arrays is not None
    assert collections == []
    assert all(len(r.content["arrays"]) == len(SHAPES) for r in replies)


def test_rejected_replies_count_against_f_so_bulyan_keeps_learning() -> None:
    # 11 replies, f = 2: Bulyan needs 4f + 3 = 11. Two NaN replies are rejected first; they
    # were 2 of the f faulty nodes, so the 9 valid ones hold none (f = 0) and Bulyan runs.
    # Counting f = 2 again, Flower's Bulyan skips the round (9 < 11) every round.
    ref = reference_of({k: np.zeros(s, np.float32) for k, s in SHAPES.items()})
    strategy = ValidatingFedAvg(
        reference=ref,
        max_examples=100,
        aggregator=Aggregator(StrategyConfig(name="bulyan", num_malicious_nodes=2)),
        fraction_train=1.0,
        min_train_nodes=1,
        min_available_nodes=1,
        fraction_evaluate=0.0,
    )
    ups = _updates(4, 11)
    for i in (3, 8):
        ups[i] = {k: np.full(s, np.nan, np.float32) for k, s in SHAPES.items()}
    new, _ = strategy.aggregate_train(1, [_reply(i + 1, u) for i, u in enumerate(ups)])
    assert strategy.stats[1].rejected == 2
    assert new is not None
    valid = [_flat(u) for i, u in enumerate(ups) if i not in (3, 8)]
    assert _close({k: a.numpy() for k, a in new.items()}, _unflat(_ref_mean(valid, [1.0] * 9)))
    assert StrategyConfig(name="bulyan", num_malicious_nodes=2).min_replies(removed=2) == 3
