import time

from sparsify_cnn.report.timing import interleaved_ms, median_ms


def test_median_runs_warmup_then_repeats_and_reports_milliseconds():
    calls = []
    assert median_ms(lambda: calls.append(1), repeats=5, warmup=2) < 50
    assert len(calls) == 7


def test_interleaved_times_each_candidate_in_rounds_after_an_untimed_run():
    order = []
    fast, slow = (lambda: order.append("fast")), (lambda: (order.append("slow"), time.sleep(0.004)))
    ms = interleaved_ms([fast, slow], rounds=3, number=2, warmup=1)
    assert ms[1] > 3.5 > ms[0]
    # warm-up of each, then per round: one untimed + two timed runs of each, in turn
    assert order == ["fast", "slow"] + (["fast"] * 3 + ["slow"] * 3) * 3
