"""Several workers of a multi-worker run as local processes on loopback (tests, benchmarks, demos).

Each process gets the standard TF_CONFIG (cluster of 127.0.0.1 ports picked by
binding to port 0, and its own task index), its share of the CPU threads, and
its output lines prefixed with its worker id. TensorFlow does the rest: the
processes find each other through TF_CONFIG, as they would on real nodes.
SIGTERM, SIGINT (Ctrl-C) or SIGHUP sent to the launcher is passed on to every
worker as SIGTERM: each saves and stops as a single process does; the launcher
waits for them, so none is orphaned.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

STOP_GRACE_S = 10.0
SIGNAL_GRACE_S = 300.0  # how long workers sent SIGTERM may take to save and stop before they are killed


class SignalForwarder:
    """While active, turns SIGTERM, SIGINT (Ctrl-C) and SIGHUP to the launcher into SIGTERM to every worker,
    which saves at a batch and stops, instead of ending the launcher; remembers the signal received."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, processes: list[subprocess.Popen]):
        self.processes = processes
        self.signum: int | None = None
        self.deadline = 0.0

    def __call__(self, signum, frame) -> None:
        if self.signum is None:
            self.deadline = time.monotonic() + SIGNAL_GRACE_S
            self.signum = signum
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def __enter__(self) -> SignalForwarder:
        in_main = threading.current_thread() is threading.main_thread()  # Python handles signals only there
        self._previous = {signum: signal.signal(signum, self) for signum in self.SIGNALS} if in_main else {}
        return self

    def __exit__(self, *error) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago (all bound at once, then released)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(ports: Sequence[int], index: int) -> str:
    """The TF_CONFIG of worker `index` in a cluster of loopback workers listening on `ports`."""
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def worker_environment(ports: Sequence[int], index: int, threads: int, gpus: int = 0) -> dict[str, str]:
    """The parent's environment plus TF_CONFIG, unbuffered output, OMP threads (faiss) per worker and,
    with `gpus` > 0, the worker's own GPUs: index * gpus to (index + 1) * gpus - 1."""
    environment = dict(os.environ, TF_CONFIG=tf_config(ports, index), PYTHONUNBUFFERED="1")
    environment.setdefault("OMP_NUM_THREADS", str(threads))
    if gpus:
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(index * gpus + gpu) for gpu in range(gpus))
    return environment


def _relay(stream, prefix: str, write: Callable[[str], None], lock: threading.Lock) -> None:
    """Passes each line of `stream` to `write` with `prefix`, one whole line at a time: print() writes a
    line and its newline separately, so two workers' lines could otherwise interleave."""
    for line in stream:
        with lock:
            write(f"{prefix}{line.rstrip()}")


def run_local_cluster(command: Sequence[str], workers: int, threads: int = 0,
                      write: Callable[[str], None] = print, gpus_per_worker: int = 0) -> int:
    """Runs `command` as `workers` local workers (each with `gpus_per_worker` GPUs of its own, if > 0)
    and waits; when one fails the others are stopped (they would wait forever in a collective).
    Returns 0, or the first failing exit status; after SIGTERM, SIGINT or SIGHUP (SIGTERM passed on to
    the workers, then waited for), 128 + that signal's number, as a process it had ended."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    ports = free_ports(workers)
    processes, relays, lock = [], [], threading.Lock()
    with SignalForwarder(processes) as forwarder:
        for index in range(workers):
            environment = worker_environment(ports, index, threads, gpus_per_worker)
            # A session of its own: a terminal's Ctrl-C reaches the launcher only, which passes on SIGTERM.
            process = subprocess.Popen(list(command), env=environment, text=True, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            processes.append(process)
            if forwarder.signum is not None:  # arrived while the workers were being started
                process.send_signal(signal.SIGTERM)
            relay = threading.Thread(target=_relay, args=(process.stdout, f"[worker {index}] ", write, lock),
                                     daemon=True)
            relay.start()
            relays.append(relay)
        status = _wait_all(processes, forwarder)
    for relay in relays:
        relay.join()
    return status


def _wait_all(processes: list[subprocess.Popen], forwarder: SignalForwarder) -> int:
    """Waits for every process; on the first non-zero exit, stops the ones still running. Once a signal
    was forwarded, waits for all of them to save and stop (killing them after SIGNAL_GRACE_S)."""
    while True:
        codes = [process.poll() for process in processes]
        if forwarder.signum is not None:
            if all(code is not None for code in codes):
                return 128 + forwarder.signum
            if time.monotonic() > forwarder.deadline:
                _stop(processes)
        else:
            failed = [code for code in codes if code not in (None, 0)]
            if failed:
                _stop(processes)
                return failed[0] if failed[0] > 0 else 128 - failed[0]  # killed by signal N: 128 + N, as a shell
            if all(code == 0 for code in codes):
                return 0
        time.sleep(0.2)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def python_command(script: str, arguments: Sequence[str]) -> list[str]:
    """This interpreter running `script` with `arguments`."""
    return [sys.executable, script, *arguments]
