import io

from sparsify_cnn.cli.progress import ProgressLine


def test_log_lines_are_throttled_and_say_phase_target_and_best():
    stream = io.StringIO()
    progress = ProgressLine(stream, interval=3600)
    progress("first level", "conv1", 3, 14, 1234.0)
    progress("first level", "conv1", 4, 14, 2000.0)  # within the interval: not printed
    progress.close()
    assert stream.getvalue() == "[first level] conv1 3/14  best saved 1,234 MACs/image\n"


def test_the_first_line_prints_however_recently_the_machine_booted(monkeypatch):
    clock = iter([1.0, 2.0, 3601.5])  # monotonic() counts from boot: 1 s up, well inside the interval
    monkeypatch.setattr("sparsify_cnn.cli.progress.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress = ProgressLine(stream, interval=3600)
    progress("search", "conv1", 1, 2, 10.0)
    progress("search", "conv1", 2, 2, 20.0)  # 1 s after the first line: throttled
    progress("search", "conv2", 2, 2, 30.0)  # the interval has passed since the first line
    assert stream.getvalue().splitlines() == [
        "[search] conv1 1/2  best saved 10 MACs/image",
        "[search] conv2 2/2  best saved 30 MACs/image",
    ]
