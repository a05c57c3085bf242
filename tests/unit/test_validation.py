import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeai.flower.validation import check_update, reference_of

GOOD = {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}
REF = reference_of(GOOD)


def test_a_valid_update_passes() -> None:
    assert check_update(GOOD, 10, REF, max_examples=100) is None
    assert check_update(GOOD, np.int64(100), REF, max_examples=100) is None


@pytest.mark.parametrize(
    ("arrays", "num_examples", "reason"),
    [
        ({**GOOD, "w": np.full((3, 2), np.nan, np.float32)}, 10, "NaN or Inf"),
        ({**GOOD, "b": np.array([np.inf, 0], np.float32)}, 10, "NaN or Inf"),
        ({**GOOD, "w": np.ones((2, 3), np.float32)}, 10, "shape"),
        ({**GOOD, "w": np.ones((3, 2), np.float64)}, 10, "dtype"),
        ({"w": GOOD["w"]}, 10, "missing"),
        ({**GOOD, "extra": np.ones(1, np.float32)}, 10, "unexpected"),
        (GOOD, 0, "outside"),
        (GOOD, -5, "outside"),
        (GOOD, 10**9, "outside"),
        (GOOD, 3.5, "integer"),
        (GOOD, True, "integer"),
        (GOOD, None, "integer"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason(
    arrays: dict[str, np.ndarray], num_examples: object, reason: str
) -> None:
    result = check_update(arrays, num_examples, REF, max_examples=100)
    assert result is not None
    assert reason in result


@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=2, max_size=2),
    st.integers(-10, 200),
)
def test_accepted_updates_are_always_finite_and_sane(values: list[float], n: int) -> None:
    arrays = {**GOOD, "b": np.array(values, np.float32)}
    if check_update(arrays, n, REF, max_examples=100) is None:
        assert np.isfinite(arrays["b"]).all()
        assert 1 <= n <= 100
