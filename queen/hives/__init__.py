"""The queen's hives: a registry of handles, each with a backend for the queen's own machine
(local.py) or another one over SSH (remote/)."""

from queen.hives.backend import HiveState
from queen.hives.handle import HiveHandle
from queen.hives.registry import HiveRegistry

__all__ = ["HiveHandle", "HiveRegistry", "HiveState"]
