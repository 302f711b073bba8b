"""Progress of the long stages (folder scan, feature extraction, PCA, each k-means level).

On a terminal a stage is one line redrawn in place, as Keras's Progbar does; otherwise (a log
file, a batch job) it prints a plain timestamped line with its rate and ETA at most every
`interval` seconds, so that a stage shorter than that prints nothing. The stages read the
settings of the innermost `reporting` block, so the library functions doing the work need no
extra argument; outside one they are silent.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import sys
import time
from collections.abc import Iterator

AUTO = -1  # verbosity chosen by whether stdout is a terminal
TERMINAL_INTERVAL = 0.1  # seconds between two redraws of a stage's line on a terminal


def resolve_verbose(verbose: int) -> int:
    """Keras's verbosity for `verbose`: AUTO gives 1 (progress bars) on a terminal, 2 (plain lines) otherwise."""
    if verbose != AUTO:
        return verbose
    return 1 if sys.stdout.isatty() else 2


@dataclasses.dataclass(frozen=True)
class _Settings:
    verbose: int = 0
    interval: float = 10.0


_SILENT = _Settings()
_SETTINGS: contextvars.ContextVar[_Settings] = contextvars.ContextVar("keras_dc_progress", default=_SILENT)


@contextlib.contextmanager
def reporting(verbose: int, interval: float = 10.0) -> Iterator[None]:
    """Stages started inside show progress at Keras verbosity `verbose` (0 silent, 1 bar, 2 lines, AUTO)."""
    token = _SETTINGS.set(_Settings(resolve_verbose(verbose), interval))
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def format_seconds(seconds: float) -> str:
    """A duration as H:MM:SS."""
    return str(datetime.timedelta(seconds=round(seconds)))


class Stage:
    """One long stage of `total` units of work; call update(done) as it advances, up to update(total).

    On a terminal the stage is one line rewritten in place and erased at the end; a stage of
    0 units, or outside `reporting`, shows nothing.
    """

    def __init__(self, name: str, total: int, unit: str):
        settings = _SETTINGS.get()
        self.name, self.total, self.unit = name, total, unit
        self.verbose = settings.verbose if total > 0 else 0
        self.interval = settings.interval if self.verbose == 2 else TERMINAL_INTERVAL
        self.start = self.last = time.monotonic()
        self.shown = False

    def update(self, done: int) -> None:
        """Shows that `done` of the `total` units are finished."""
        now = time.monotonic()
        if self.verbose == 1 and done >= self.total and self.shown:
            sys.stdout.write("\r\033[K")
        if not 0 < done < self.total or self.verbose not in (1, 2) or now - self.last < self.interval:
            return
        self.last, self.shown = now, True
        line = self.line(done, now - self.start)
        sys.stdout.write(f"\r{line}\033[K" if self.verbose == 1 else f"{line}\n")
        sys.stdout.flush()

    def line(self, done: int, elapsed: float) -> str:
        """'HH:MM:SS name: done/total units (p%), rate units/s, ETA H:MM:SS'."""
        rate = done / max(elapsed, 1e-9)
        return (f"{datetime.datetime.now():%H:%M:%S} {self.name}: {done:,}/{self.total:,} {self.unit}s "
                f"({100 * done / self.total:.0f}%), {rate:,.1f} {self.unit}s/s, "
                f"ETA {format_seconds((self.total - done) / rate)}")
