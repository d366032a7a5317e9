from __future__ import annotations

import pytest

from shared.app import create_base_app
from shared.job_registry import JobLimits
from shared.job_routes import setup_job_api
from shared.operations import OPERATIONS
from tests.support.keeper import running_keeper
from tests.support.processes import start_queen
from tests.support.scripted_executor import ScriptedExecutor

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def executor():
    return ScriptedExecutor()


@pytest.fixture
def make_job_app(executor):
    """A real aiohttp app with the shared job API mounted, as a daemon mounts it."""

    def make(*, limits: JobLimits = JobLimits(), operations=OPERATIONS, max_body_bytes: int = 1024 * 1024):
        app = create_base_app(TOKEN, max_body_bytes=max_body_bytes)
        setup_job_api(app, executor, actor="queen", operations=operations, limits=limits)
        return app

    return make


@pytest.fixture
async def client(aiohttp_client, make_job_app):
    return await aiohttp_client(make_job_app())


@pytest.fixture
def keeper(tmp_path, slow):
    """The real `rbee` with a home of its own: the queen it wakes is stopped afterwards, with all it started."""
    with running_keeper(tmp_path / "home") as keeper:
        yield keeper


@pytest.fixture(scope="module")
def queen(request, tmp_path_factory, slow):
    """One real queen for a module's tests (a module that needs another kind defines its own `queen`)."""
    daemon = start_queen(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1] + "-home"))
    yield daemon
    daemon.stop(30)
