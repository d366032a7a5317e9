"""The keeper's errors: each printed to stderr as one line, with a non-zero exit code."""

from shared.errors import RbeeError


class KeeperError(RbeeError):
    title = "rbee"
    code = "KEEPER_ERROR"
    exit_code = 1


class QueenNotRunning(KeeperError):
    title = "Queen not running"
    code = "QUEEN_NOT_RUNNING"
    exit_code = 3


class QueenStartFailed(KeeperError):
    title = "Queen failed to start"
    code = "QUEEN_START_FAILED"
    exit_code = 3
