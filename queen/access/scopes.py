"""The scope every route of the queen needs, in one table, and the scope every job operation needs.

A key's scope is one of three, each including the ones below it: `infer` (the inference, embedding and
model-listing routes of the OpenAI, Ollama and Anthropic APIs, for the key's models only, and its own
jobs, conversations and responses), `read` (adds status, listings and /metrics) and `admin` (everything, what the
queen's own token has). A route missing from the table needs `admin`: new routes are closed until
someone decides otherwise (tests/unit/test_scopes.py checks that every route of the queen is listed).
"""

from __future__ import annotations

import enum
from typing import Final

from shared.embeddings import EMBEDDINGS_PATH
from shared.heartbeat import HEARTBEAT_PATH
from shared.operations import Operation


class Scope(enum.IntEnum):
    INFER = 1
    READ = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Scope:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown scope {text!r}: use infer, read or admin") from None

    def __str__(self) -> str:
        return self.name.lower()


PUBLIC: Final = "public"  # no credentials at all
OWN_CHECK: Final = "own"  # the handler checks credentials itself (heartbeats carry hive tokens)

I, R, A = Scope.INFER, Scope.READ, Scope.ADMIN

# (method, route as registered) -> what it needs. "*" is a route that takes any method.
ROUTE_SCOPES: Final[dict[tuple[str, str], Scope | str]] = {
    ("GET", "/health"): PUBLIC,
    (("POST", HEARTBEAT_PATH)): OWN_CHECK,
    # OpenAI
    ("GET", "/v1/models"): I,
    ("POST", "/v1/completions"): I,
    ("POST", "/v1/chat/completions"): I,
    ("POST", EMBEDDINGS_PATH): I,
    # OpenAI's Responses API: a key below admin reads and deletes its own responses only
    ("POST", "/v1/responses"): I,
    ("GET", "/v1/responses/{id}"): I,
    ("DELETE", "/v1/responses/{id}"): I,
    ("GET", "/v1/responses/{id}/input_items"): I,
    # Anthropic
    ("POST", "/v1/messages"): I,
    ("POST", "/v1/messages/count_tokens"): I,
    # Ollama: inference, embeddings and the model listings; what shows the cluster (ps) reads; pulls administer
    ("POST", "/api/chat"): I,
    ("POST", "/api/generate"): I,
    ("POST", "/api/embed"): I,
    ("POST", "/api/embeddings"): I,
    ("GET", "/api/tags"): I,
    ("POST", "/api/show"): I,
    ("GET", "/api/version"): I,
    ("GET", "/api/ps"): R,
    ("POST", "/api/pull"): A,
    ("*", "/api/create"): A,  # not served (501), as Ollama's model management is not
    ("*", "/api/copy"): A,
    ("*", "/api/push"): A,
    ("*", "/api/delete"): A,
    # jobs and conversations: a key below admin sees only its own (shared/job_routes.py, conversation_routes)
    ("POST", "/v1/jobs"): I,  # and then the operation's own scope (OPERATION_SCOPES)
    ("GET", "/v1/jobs"): I,
    ("GET", "/v1/jobs/{job_id}"): I,
    ("DELETE", "/v1/jobs/{job_id}"): I,
    ("GET", "/v1/jobs/{job_id}/stream"): I,
    ("POST", "/v1/conversations"): I,
    ("GET", "/v1/conversations"): I,
    ("GET", "/v1/conversations/{id}"): I,
    ("PATCH", "/v1/conversations/{id}"): I,
    ("DELETE", "/v1/conversations/{id}"): I,
    # the cluster at a glance
    ("GET", "/v1/info"): R,
    ("GET", "/v1/config"): A,  # the queen's settings (file paths among them)
    ("GET", "/v1/workers"): R,
    ("GET", "/v1/hives"): R,
    ("GET", "/metrics"): R,
    # running the queen and its keys
    ("POST", "/v1/shutdown"): A,
    ("POST", "/v1/keys"): A,
    ("GET", "/v1/keys"): A,
    ("GET", "/v1/keys/usage"): A,
    ("DELETE", "/v1/keys/{name}"): A,
    ("POST", "/v1/keys/{name}/rotate"): A,
}

# Job operations (POST /v1/jobs): inference needs infer, a read-only one (lists, status) read, the rest admin.
INFER_OPERATIONS: Final = frozenset({"infer", "embed"})


def route_scope(method: str, route: str) -> Scope | str:
    """What (method, route) needs; a route nobody listed needs admin."""
    method = "GET" if method == "HEAD" else method  # aiohttp serves HEAD wherever it serves GET
    return ROUTE_SCOPES.get((method, route)) or ROUTE_SCOPES.get(("*", route)) or Scope.ADMIN


def operation_scope(operation: Operation) -> Scope:
    if operation.name in INFER_OPERATIONS:
        return Scope.INFER
    return Scope.READ if operation.read_only else Scope.ADMIN
