"""Pre-emption: SIGTERM asks a run to save a checkpoint at the current batch and stop.

Schedulers send SIGTERM some time before they reclaim a machine. While
`sigterm_requests` is active the signal only records the request; the
checkpoint callback acts on it at the next batch boundary, where the state is
whole, and raises `Preempted`. Rerunning the same command resumes at that batch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from keras_dc.workdir import Position


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint at `position`; rerun to resume."""

    def __init__(self, position: Position, steps_per_epoch: int):
        super().__init__(f"pre-empted: saved a checkpoint at epoch {position.epoch + 1}, batch "
                         f"{position.step} of {steps_per_epoch}; rerun the same command to resume from it")
        self.position = position


class StopRequest:
    """Whether SIGTERM was received while the request handler was installed."""

    def __init__(self):
        self.requested = False

    def handle(self, signum, frame) -> None:
        self.requested = True


@contextlib.contextmanager
def sigterm_requests() -> Iterator[StopRequest | None]:
    """Turns SIGTERM into a StopRequest while active; yields None off the main thread (Python only
    delivers signals there), leaving SIGTERM's usual effect. On several workers the checkpoint
    callback makes them agree on the batch where they all stop (tools/launch_local.py passes
    SIGTERM on to each)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    request = StopRequest()
    previous = signal.signal(signal.SIGTERM, request.handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
