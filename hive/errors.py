"""Errors the hive reports as `error` events (the job then ends `failed`)."""

from shared.errors import RbeeError


class HiveError(RbeeError):
    title = "Hive error"
    code = "HIVE_ERROR"
    status = 400


class ModelNotFound(HiveError):
    title = "Model not found"
    code = "MODEL_NOT_FOUND"
    status = 404


class DownloadFailed(HiveError):
    title = "Download failed"
    code = "DOWNLOAD_FAILED"
    status = 502


class WorkerNotFound(HiveError):
    title = "Worker not found"
    code = "WORKER_NOT_FOUND"
    status = 404


class WorkerStartFailed(HiveError):
    title = "Worker failed to start"
    code = "WORKER_START_FAILED"
    status = 500


class DeviceNotFound(HiveError):
    title = "No such device"
    code = "DEVICE_NOT_FOUND"


class ModelUnusable(HiveError):
    """A catalog entry whose file the last check found missing, changed or unreadable: it is kept (and
    listed with what is wrong) but never served."""

    title = "Model unusable"
    code = "MODEL_CORRUPT"
    status = 409


class TransferRefused(HiveError):
    """A model's bytes arrived from the queen but are not what was sent (size or sha256)."""

    title = "Transfer refused"
    code = "CHECKSUM_MISMATCH"
    status = 422
