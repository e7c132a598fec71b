from sparsify_cnn.report.timing import median_ms


def test_median_runs_warmup_then_repeats_and_reports_milliseconds():
    calls = []
    assert median_ms(lambda: calls.append(1), repeats=5, warmup=2) < 50
    assert len(calls) == 7
