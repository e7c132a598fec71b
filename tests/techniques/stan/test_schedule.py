import pytest

from sparsify_cnn.errors import InputError
from sparsify_cnn.techniques.stan.schedule import counts, epoch_kind, schedule
from sparsify_cnn.techniques.stan.timing import LayerTimes, predicted_speedup, scheduled_speedup

D, B, S = "dense", "build", "skip"


@pytest.mark.parametrize(
    "pre, period, expected",
    [
        (0, 1, [B, S, B, S, B, S, B]),
        (1, 1, [D, B, S, B, S, B, S]),
        (0, 2, [B, S, S, B, S, S, B]),
        (1, 2, [D, B, S, S, B, S, S]),
        (2, 3, [D, D, B, S, S, S, B]),
        (7, 1, [D] * 7),
        (10, 4, [D] * 7),
    ],
)
def test_epoch_schedule(pre, period, expected):
    assert schedule(7, pre, period) == expected
    assert [epoch_kind(e, pre, period) for e in range(7)] == expected
    assert counts(7, pre, period) == {k: expected.count(k) for k in (D, B, S)}


@pytest.mark.parametrize("pre, period", [(-1, 1), (0, 0)])
def test_bad_schedule(pre, period):
    with pytest.raises(InputError, match="p_t" if pre < 0 else "period Z"):
        epoch_kind(0, pre, period)


def test_timing_model_is_the_seeds_formula():
    # N(t_f + t_b) / (N(t_f + t_b) - (N - p_t)/(Z + 1) (Z t_i - t_e)), by hand:
    assert predicted_speedup(10, 0, 1, 1.0, 0.2, 0.05) == pytest.approx(10 / (10 - 5 * 0.15))
    assert predicted_speedup(12, 2, 4, 2.0, 0.5, 0.1) == pytest.approx(24 / (24 - 2 * (2.0 - 0.1)))
    # Building E costs what skipping saves: no speedup; nothing saved and E free: none either.
    assert predicted_speedup(10, 1, 2, 1.0, 0.1, 0.2) == pytest.approx(1.0)
    assert predicted_speedup(10, 0, 1, 1.0, 0.0, 0.0) == 1.0
    # Whole epoch counts agree with the closed form when (N - p_t) is a multiple of Z + 1.
    assert scheduled_speedup(9, 3, 2, 1.0, 0.3, 0.1) == pytest.approx(predicted_speedup(9, 3, 2, 1.0, 0.3, 0.1))
    # A skipping forward slower than the dense one predicts a slowdown.
    assert predicted_speedup(10, 0, 1, 1.0, -0.2, 0.1) < 1
    times = LayerTimes(t_f=0.3, t_b=0.5, t_e=0.1, t_skip=0.2)
    assert times.t_i == pytest.approx(0.1) and times.to_dict()["t_i"] == pytest.approx(0.1)
