import io
import time

import pytest

from sparsify_cnn.cli import progress as progress_module
from sparsify_cnn.cli.progress import ProgressDisplay, duration

CLEAR = "\r\033[K"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _display(tty=False, interval=None):
    stream, clock = io.StringIO(), Clock()
    return ProgressDisplay(stream, tty=tty, interval=interval, clock=clock, width=200, heartbeat=False), stream, clock


def test_a_log_line_says_phase_item_count_elapsed_and_what_is_left():
    progress, stream, clock = _display(interval=15)
    progress("training", "epoch 1 of 2", 0, 10, unit="steps")
    clock.now += 30
    progress("training", "epoch 1 of 2, step 3 of 5", 3, 10, unit="steps", loss=0.41234)
    # 3 steps in 30 s: 7 left take 70 s.
    expected = "[training] epoch 1 of 2, step 3 of 5  3/10 steps  30s elapsed, ~1m10s left  loss 0.4123\n"
    assert stream.getvalue() == expected


def test_the_estimate_counts_only_this_runs_work():
    progress, stream, clock = _display(interval=15)
    progress("training", "epoch 6 of 10", 50, 100)  # resumed half way: those 50 took no time here
    clock.now += 20
    progress("training", "epoch 6 of 10", 60, 100)
    assert stream.getvalue().endswith("60/100  20s elapsed, ~1m20s left\n")  # 10 units in 20 s, 40 left


@pytest.mark.parametrize(
    "total, extra, expected",
    [
        (None, {}, "[search] step 3  3  30s elapsed\n"),  # no total: no estimate
        (10, {"eta": False}, "[search] step 3  3/10  30s elapsed\n"),  # unlike steps: no estimate
        (10, {"at_most": True}, "[search] step 3  3 of at most 10  30s elapsed, at most ~1m10s left\n"),
    ],
)
def test_no_estimate_without_a_total_or_where_steps_are_unlike(total, extra, expected):
    progress, stream, clock = _display(interval=15)
    progress("search", "start", 0, total, **extra)
    clock.now += 30
    progress("search", "step 3", 3, total, **extra)
    assert stream.getvalue() == expected


def test_logs_get_a_line_per_interval_per_phase_and_one_when_it_ends():
    progress, stream, clock = _display(interval=15)
    for second in range(41):  # two phases, a call each every second
        clock.now = 1000.0 + second
        progress("a", f"at {second}", second, 40)
        if second < 40:
            progress("b", f"at {second}", second, None)
    lines = stream.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["[a] at 15", "[b] at 15", "[a] at 30", "[b] at 30", "[a] at 40"]
    assert lines[-1] == "[a] at 40  40/40  done in 40s"
    progress.close()  # b never ended: its last line says it stopped
    assert stream.getvalue().splitlines()[-1] == "[b] at 39  39  stopped after 40s"  # closed at 40 s


def test_a_phase_that_ends_before_the_interval_prints_one_line():
    progress, stream, clock = _display(interval=15)
    progress("compile", "export", 0, 2, eta=False)
    clock.now += 3
    progress("compile", "build", 1, 2, eta=False)
    clock.now += 4
    progress("compile", "written", 2, 2, eta=False)
    progress.close()
    assert stream.getvalue() == "[compile] written  2/2  done in 7s\n"


def test_a_bounded_phase_ends_only_when_it_says_so():
    progress, stream, clock = _display(interval=15)
    progress("rate search", "step 4", 4, 4, at_most=True)  # reached the bound, still reporting
    assert stream.getvalue() == ""
    clock.now += 2
    progress("rate search", "stopped: no layer can go further", 4, 4, at_most=True, end=True)
    assert stream.getvalue() == "[rate search] stopped: no layer can go further  4 of at most 4  done in 2s\n"


def test_a_terminal_line_is_redrawn_in_place_and_ends_with_a_newline():
    progress, stream, clock = _display(tty=True, interval=0.1)
    progress("tuning", "task 1 of 2", 0, 8, unit="trials")
    clock.now += 0.05
    progress("tuning", "task 1 of 2", 2, 8, unit="trials")  # within the redraw interval: not drawn
    clock.now += 1.95
    progress("tuning", "task 2 of 2", 4, 8, unit="trials", best_ms=0.01234)
    clock.now += 2
    progress("tuning", "task 2 of 2", 8, 8, unit="trials")
    assert stream.getvalue() == (
        f"{CLEAR}[tuning] task 1 of 2  0/8 trials  0s elapsed"
        f"{CLEAR}[tuning] task 2 of 2  4/8 trials  2s elapsed, ~2s left  best 0.01234 ms"
        f"{CLEAR}[tuning] task 2 of 2  8/8 trials  done in 4s\n"
    )


def test_a_terminal_line_is_cut_to_the_width_and_cleared_for_other_output(capsys):
    stream, clock = io.StringIO(), Clock()
    progress = ProgressDisplay(stream, tty=True, clock=clock, width=20, heartbeat=False)
    progress("training", "epoch 1 of 8, step 1 of 17", 1, 136)
    progress.echo("  epoch   1  loss 2.21")
    assert stream.getvalue() == f"{CLEAR}[training] epoch 1 {CLEAR}"  # 19 columns: no wrap
    assert capsys.readouterr().out == "  epoch   1  loss 2.21\n"


def test_known_extras_read_as_words():
    progress, stream, clock = _display(interval=15)
    progress("spatial search", "layer 1 of 2 (conv1)", 0, 2, unit="layers", best_saved=123456.7)
    progress("combining layers", "step 1", 1, 1, saved=1000.0, accuracy=0.97123, speedup=1.4342, calib="ok")
    assert "best saved 123,457 MACs/image" not in stream.getvalue()  # not ended, inside the interval
    progress.close()
    assert stream.getvalue().splitlines() == [
        "[combining layers] step 1  1/1  done in 0s  saved 1,000 MACs/image  accuracy 97.12%  speedup 1.43x  calib ok",
        "[spatial search] layer 1 of 2 (conv1)  0/2 layers  stopped after 0s  best saved 123,457 MACs/image",
    ]


def test_a_tick_redraws_the_phase_last_heard_of_while_work_blocks():
    progress, stream, clock = _display(interval=15)
    progress("compile", "build", 2, 5, eta=False)
    progress("tuning setup", "search spaces of 3 tasks", 0, 1, eta=False)
    clock.now += 10
    progress.tick()  # not due yet
    clock.now += 10
    progress.tick()
    progress("tuning setup", "search spaces of 3 tasks", 1, 1, eta=False)
    clock.now += 20
    progress.tick()  # the inner phase ended: the outer one is the one still working
    assert stream.getvalue().splitlines() == [
        "[tuning setup] search spaces of 3 tasks  0/1  20s elapsed",
        "[tuning setup] search spaces of 3 tasks  1/1  done in 20s",
        "[compile] build  2/5  40s elapsed",
    ]


def test_the_heartbeat_thread_redraws_until_closed(monkeypatch):
    monkeypatch.setattr(progress_module, "HEARTBEAT", 0.01)
    stream = io.StringIO()
    progress = ProgressDisplay(stream, tty=False, interval=0.0)
    progress("tuning", "task 1 of 1", 0, 4)  # then blocks, as a batch of trials does
    deadline = time.monotonic() + 10
    while stream.getvalue().count("\n") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and all(text.startswith("[tuning] task 1 of 1  0/4  ") for text in lines)
    assert lines[-1].endswith("stopped after 0s")
    time.sleep(0.05)
    assert stream.getvalue().splitlines() == lines  # closed: the thread draws no more


@pytest.mark.parametrize(
    "seconds, text", [(0.4, "0s"), (59.6, "1m00s"), (75, "1m15s"), (3599, "59m59s"), (7380, "2h03m")]
)
def test_durations(seconds, text):
    assert duration(seconds) == text
