"""Errors the queen reports as `error` events."""

from shared.errors import RbeeError


class QueenError(RbeeError):
    title = "Queen error"
    code = "QUEEN_ERROR"
    status = 400


class UnknownHive(QueenError):
    title = "Unknown hive"
    code = "UNKNOWN_HIVE"
    status = 404


class HiveUnavailable(QueenError):
    title = "Hive unavailable"
    code = "HIVE_UNAVAILABLE"
    status = 503


class WorkerCrashed(QueenError):
    title = "Worker crashed"
    code = "WORKER_CRASHED"
    status = 502


class WorkerRefused(WorkerCrashed):
    """The request could not start on the worker: another may take it."""


class WorkerDrained(WorkerCrashed):
    """The worker is being taken out of service and its deadline passed: the answer continues elsewhere."""

    code = "WORKER_DRAINED"


class WorkerStopped(QueenError):
    title = "Worker stopped"
    code = "WORKER_STOPPED"
    status = 503

