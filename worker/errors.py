"""The worker's errors: one base, so the CLI prints one clear line and the API answers a fitting status."""

from shared.errors import RbeeError


class WorkerError(RbeeError):
    title = "Worker error"
    code = "WORKER_ERROR"
    status = 400


class WorkerStartError(WorkerError):
    title = "Worker cannot start"
    code = "WORKER_START"


class GenerationError(WorkerError):
    title = "Generation failed"
    code = "GENERATION_FAILED"


class QueueFull(WorkerError):
    title = "Worker busy"
    code = "QUEUE_FULL"
    status = 503


class NotReady(WorkerError):
    title = "Model not ready"
    code = "NOT_READY"
    status = 503
