"""Progress lines: one line per interval off a terminal, a final line always."""

import io

from harness.progress import Progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_off_a_terminal_one_line_per_interval_and_a_final_one(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("harness.progress.time.monotonic", clock)
    out = io.StringIO()
    p = Progress("jobs", total=600, every=5, stream=out)
    for done, t in ((100, 101), (200, 104), (300, 105.5), (400, 108), (500, 111)):
        clock.now = t
        p.update(done)
    clock.now = 112
    p.finish(600, "done")
    lines = out.getvalue().splitlines()
    assert lines == [
        "jobs: 300/600 (50%) 6s",
        "jobs: 500/600 (83%) 11s",
        "jobs: 600/600 (100%) 12s done",
    ]
    assert "\r" not in out.getvalue()
