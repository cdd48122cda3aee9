"""Progress for long commands (bench, chaos, loadgen, check_ledger): a bar redrawn in
place on a terminal, a plain line every few seconds otherwise (logs and CI keep one line
per update, not a smear of carriage returns). Always on stderr: stdout stays the result."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int | None = None, every: float = 5.0, stream=None):
        self.label, self.total, self.every = label, total, every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last = self.started if not self.tty else 0.0

    def update(self, done: int | None, note: str = "") -> None:
        now = time.monotonic()
        if now - self._last < (0.2 if self.tty else self.every):
            return
        self._last = now
        self._write(done, note, now)

    def finish(self, done: int, note: str = "") -> None:
        self._write(done, note, time.monotonic(), final=True)

    def _write(self, done: int, note: str, now: float, final: bool = False) -> None:
        elapsed = now - self.started
        if self.total:
            share = min(done / self.total, 1.0)
            text = f"{self.label}: {done}/{self.total} ({share:.0%}) {elapsed:.0f}s"
            if self.tty:
                bar = "#" * int(share * 30)
                text = f"{self.label}: [{bar:<30}] {done}/{self.total} {elapsed:.0f}s"
        elif done is None:
            text = f"{self.label}: {elapsed:.0f}s"
        else:
            text = f"{self.label}: {done} {elapsed:.0f}s"
        if note:
            text += f" {note}"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
