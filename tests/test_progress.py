"""The benchmark progress judgement on exact sequences of frontend readings."""

from inferx_slurm.runtime.progress import Counters, ProgressClock, Verdict


def clock(**kw):
    return ProgressClock(**{"startup_s": 300, "stall_s": 4, "expected": 10, "t0": 0.0, **kw})


def test_first_request_after_a_long_client_startup_is_not_a_stall():
    # The client boots for 20 s (five stall bounds), then its first request is accepted and is
    # still in prefill a second later: no token yet, but the request itself is progress.
    c = clock()
    for t in range(0, 21):
        assert c.observe(Counters(0, 0, 0), float(t)) is None
    assert c.observe(Counters(1, 0, 0), 21.0) is None
    assert c.observe(Counters(1, 0, 0), 22.0) is None
    assert c.observe(Counters(1, 3, 0), 23.0) is None


def test_open_requests_with_nothing_moving_is_a_stall_after_the_bound():
    c = clock()
    c.observe(Counters(0, 0, 0), 0.0)
    c.observe(Counters(4, 10, 0), 1.0)
    assert c.observe(Counters(4, 10, 0), 5.0) is None  # exactly the bound: not yet
    assert c.observe(Counters(4, 10, 0), 5.5) is Verdict.stalled


def test_each_kind_of_movement_resets_the_stall_clock():
    c = clock()
    c.observe(Counters(0, 0, 0), 0.0)
    readings = [Counters(1, 0, 0), Counters(1, 5, 0), Counters(1, 5, 1), Counters(2, 5, 1)]
    for i, r in enumerate(readings):
        assert c.observe(r, 3.5 * (i + 1)) is None  # 3.5 s apart, under the 4 s bound each time
    assert c.observe(readings[-1], 3.5 * len(readings) + 4.5) is Verdict.stalled


def test_client_that_never_sends_fails_on_its_own_bound():
    c = clock(startup_s=30)
    assert c.observe(Counters(7, 70, 7), 0.0) is None  # counters from earlier points are the base
    assert c.observe(Counters(7, 70, 7), 29.0) is None
    assert c.observe(Counters(7, 70, 7), 31.0) is Verdict.client_silent


def test_quiet_after_every_answer_is_the_client_writing_exports():
    c = clock(expected=3)
    c.observe(Counters(5, 50, 5), 0.0)
    c.observe(Counters(8, 80, 8), 1.0)
    assert c.observe(Counters(8, 80, 8), 60.0) is None
