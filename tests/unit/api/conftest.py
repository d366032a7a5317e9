"""The queen's APIs on a real aiohttp app whose jobs a scripted generator answers (tests/support/api_app.py)."""

from __future__ import annotations

import pytest

from tests.support.api_app import api_app
from tests.support.scripted_executor import ScriptedGenerator


@pytest.fixture
def generator() -> ScriptedGenerator:
    return ScriptedGenerator()


@pytest.fixture
async def client(aiohttp_client, generator):
    return await aiohttp_client(api_app(generator))
