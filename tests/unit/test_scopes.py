"""Every route of the queen has its scope in the one table (queen/access/scopes.py), and the table names
no route that does not exist."""

from __future__ import annotations

from queen.access.scopes import ROUTE_SCOPES, Scope, operation_scope, route_scope
from queen.app import create_app
from queen.config import QueenConfig
from shared.operations import parse_operation


def queen_routes() -> set[tuple[str, str]]:
    app = create_app(QueenConfig(), "token")
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}


def test_every_route_has_a_scope_and_every_scope_a_route():
    routes = queen_routes()
    assert routes - set(ROUTE_SCOPES) == set(), "routes without a scope: add them to ROUTE_SCOPES"
    assert set(ROUTE_SCOPES) - routes == set(), "scopes of routes that do not exist"


def test_an_unlisted_route_needs_admin_and_head_is_get():
    assert route_scope("POST", "/v1/something-new") is Scope.ADMIN
    assert route_scope("HEAD", "/v1/models") is Scope.INFER
    assert route_scope("DELETE", "/api/delete") is Scope.ADMIN  # Ollama's "*" routes


def test_operations_need_infer_read_or_admin():
    def scope(body):
        return operation_scope(parse_operation(body))

    assert scope({"operation": "infer", "prompt": "hi"}) is Scope.INFER
    assert scope({"operation": "embed", "input": ["hi"]}) is Scope.INFER
    assert scope({"operation": "status"}) is Scope.READ
    assert scope({"operation": "worker_list", "hive_id": "localhost"}) is Scope.READ
    assert scope({"operation": "hive_install", "alias": "gpu1"}) is Scope.ADMIN
    assert scope({"operation": "model_delete", "hive_id": "localhost", "id": "m"}) is Scope.ADMIN
    assert scope({"operation": "worker_spawn", "hive_id": "localhost", "model": "m"}) is Scope.ADMIN
