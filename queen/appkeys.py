"""Typed keys of the queen's aiohttp app (the shared ones are in shared/appkeys.py). All but CONFIG are
set by `queen_ctx` when the app starts, and live exactly as long as it runs."""

from __future__ import annotations

from aiohttp import web

from queen.access.keys import ApiKey, KeyStore
from queen.access.limits import KeyLimits
from queen.config import QueenConfig
from queen.conversations import ConversationStore
from queen.executor import QueenExecutor
from queen.hives import HiveRegistry
from queen.model_names import KnownModels
from queen.responses import ResponseStore
from queen.worker_registry import WorkerRegistry
from shared.job_client import Clients

CONFIG = web.AppKey("queen_config", QueenConfig)
CLIENTS = web.AppKey("queen_clients", Clients)
HIVES = web.AppKey("queen_hives", HiveRegistry)
WORKERS = web.AppKey("queen_workers", WorkerRegistry)
EXECUTOR = web.AppKey("queen_executor", QueenExecutor)
CONVERSATIONS = web.AppKey("queen_conversations", ConversationStore)
RESPONSES = web.AppKey("queen_responses", ResponseStore)  # the Responses API's stored responses
KNOWN_MODELS = web.AppKey("queen_known_models", KnownModels)  # the API layers' model check
KEYS = web.AppKey("queen_keys", KeyStore)  # API keys (queen/access)
LIMITS = web.AppKey("queen_key_limits", KeyLimits)  # what each key is using now
CALLER = web.RequestKey("queen_caller", ApiKey)  # the API key of a request; absent for the queen's own token
