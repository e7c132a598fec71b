import io

from sparsify_cnn.cli.progress import ProgressLine


def test_log_lines_are_throttled_and_say_phase_target_and_best():
    stream = io.StringIO()
    progress = ProgressLine(stream, interval=3600)
    progress("first level", "conv1", 3, 14, 1234.0)
    progress("first level", "conv1", 4, 14, 2000.0)  # within the interval: not printed
    progress.close()
    assert stream.getvalue() == "[first level] conv1 3/14  best saved 1,234 MACs/image\n"
