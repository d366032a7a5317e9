"""Typed keys of the hive's aiohttp app (the shared ones are in shared/appkeys.py)."""

from __future__ import annotations

from aiohttp import web

from hive.config import HiveConfig
from hive.executor import HiveExecutor
from hive.queen_link import QueenLink

CONFIG = web.AppKey("hive_config", HiveConfig)
EXECUTOR = web.AppKey("hive_executor", HiveExecutor)
QUEEN = web.AppKey("hive_queen", QueenLink)
