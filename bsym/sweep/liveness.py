"""Which RUNNING trials are still alive: worker records, heartbeats, stale trials.

Optuna's journal storage has no heartbeat, so a trial whose process was killed
stays RUNNING for ever. bsym records, on each trial it starts, the worker that
runs it (host, process id and start time) and refreshes a heartbeat time in the
trial's user attributes every ``heartbeat_interval`` seconds. A RUNNING trial is
*stale* when its worker ran on this host and that process is gone, or, for a
worker elsewhere, when its last sign of life (heartbeat, else start time) is
older than ``STALE_AFTER_BEATS`` heartbeat intervals. Stale trials are marked
FAIL (:func:`fail_stale_trials`), so they count neither as finished nor as running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from functools import lru_cache

from optuna.trial import TrialState

WORKER_ATTR = "bsym.worker"
HEARTBEAT_ATTR = "bsym.heartbeat"
STALE_AFTER_BEATS = 3
DEFAULT_HEARTBEAT_INTERVAL = 60.0

logger = logging.getLogger(__name__)


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


@lru_cache(maxsize=1)
def host_id() -> str:
    """This machine and process-id namespace: where a pid names one process."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    return "|".join([socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), pid_ns])


def _process_start(pid):
    """Start time (clock ticks since boot) of a process, or None where /proc is missing."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return None if fields[0] == "Z" else fields[19]  # a zombie has finished


def process_alive(pid, start=None) -> bool:
    """Whether process ``pid`` runs and, if ``start`` is given, is the one that started then."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    except (OSError, ValueError, TypeError):
        return False
    if start is None or not os.path.isdir("/proc"):
        return True
    return _process_start(pid) == start


def worker_record(heartbeat_interval) -> dict:
    """What identifies this process as a trial's worker (stored as a trial user attribute)."""
    pid = os.getpid()
    return {"host": host_id(), "hostname": socket.gethostname(), "pid": pid,
            "start": _process_start(pid), "heartbeat_interval": float(heartbeat_interval)}


def is_stale(trial, now=None) -> bool:
    """Whether a RUNNING ``trial`` (a FrozenTrial) has lost its worker."""
    if trial.state != TrialState.RUNNING:
        return False
    record = trial.user_attrs.get(WORKER_ATTR)
    record = record if isinstance(record, dict) else {}
    if record.get("host") == host_id() and "pid" in record:
        return not process_alive(record["pid"], record.get("start"))
    interval = float(record.get("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL))
    last = trial.user_attrs.get(HEARTBEAT_ATTR)
    if last is None:
        if trial.datetime_start is None:
            return False
        last = trial.datetime_start.timestamp()  # naive local time, as Optuna stores it
    now = time.time() if now is None else now
    return now - float(last) > STALE_AFTER_BEATS * interval


def fail_stale_trials(study, on_fail=None) -> list:
    """Mark the study's stale RUNNING trials FAIL.

    Parameters
    ----------
    study : optuna.Study
    on_fail : callable, optional
        Called with each trial (FrozenTrial, before the change) that was marked.

    Returns
    -------
    list of FrozenTrial
        The trials marked FAIL.
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial):
            continue
        record = trial.user_attrs.get(WORKER_ATTR) or {}
        logger.warning("trial %d of study %r was left RUNNING by a worker that is gone (%s pid %s); "
                       "marking it FAIL", trial.number, study.study_name, record.get("hostname", "?"),
                       record.get("pid", "?"))
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        failed.append(trial)
        if on_fail is not None:
            on_fail(trial)
    return failed


def claim(trial, heartbeat_interval) -> None:
    """Record this process as the worker of ``trial`` (an optuna Trial), with a first heartbeat."""
    trial.set_user_attr(WORKER_ATTR, worker_record(heartbeat_interval))
    trial.set_user_attr(HEARTBEAT_ATTR, time.time())


@contextlib.contextmanager
def heartbeat(trial, interval):
    """Refresh ``trial``'s heartbeat every ``interval`` seconds in a daemon thread."""
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            try:
                trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            except Exception as err:  # the trial was finished elsewhere, or the storage is gone
                logger.debug("heartbeat of trial %d stopped: %s", trial.number, err)
                return

    thread = threading.Thread(target=beat, name=f"bsym-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
