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
