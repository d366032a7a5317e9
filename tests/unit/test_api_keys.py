"""API keys on disk and in memory: only a hash kept, 0600, revoke/rotate/expiry at once, settings checked."""

from __future__ import annotations

import stat
import time

import pytest

from queen.access.keys import KEY_PREFIX, KeyExists, KeyNotFound, KeyStore, hash_key, key_settings, parse_duration
from queen.access.scopes import Scope
from shared.errors import InvalidRequest, Unauthorized


@pytest.fixture
async def store(tmp_path):
    keys = KeyStore(tmp_path / "keys.db")
    await keys.open()
    yield keys
    await keys.close()


async def test_a_key_is_shown_once_and_only_its_hash_is_kept(store, tmp_path):
    key, secret = await store.create(key_settings({"name": "webui", "models": "smollm2-135m,qwen"}))
    assert secret.startswith(KEY_PREFIX) and len(secret) - len(KEY_PREFIX) >= 43  # 256 bits, URL-safe
    assert key.scope is Scope.INFER and key.models == ("smollm2-135m", "qwen")
    assert store.authenticate(secret).name == "webui"
    await store.close()
    for path in tmp_path.iterdir():  # the database and its WAL: 0600, the hash in them, never the key
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert secret.encode() not in path.read_bytes()
    assert hash_key(secret).encode() in b"".join(p.read_bytes() for p in tmp_path.iterdir())
    reopened = KeyStore(tmp_path / "keys.db")
    await reopened.open()
    assert reopened.authenticate(secret).models == ("smollm2-135m", "qwen")
    assert "hash" not in reopened.named("webui").public()
    await reopened.close()


async def test_revoked_rotated_expired_and_unknown_keys_are_told_apart(store, tmp_path):
    _, first = await store.create(key_settings({"name": "app"}))
    _, second = await store.rotate("app")
    with pytest.raises(Unauthorized, match="Unknown API key"):
        store.authenticate(first)  # the old secret of a rotated key is just unknown now
    assert store.authenticate(second).name == "app"
    await store.revoke("app")
    with pytest.raises(Unauthorized, match="'app' was revoked"):
        store.authenticate(second)
    _, again = await store.create(key_settings({"name": "app", "scope": "read"}))  # the name is free again
    assert store.authenticate(again).scope is Scope.READ
    _, old = await store.create({**key_settings({"name": "short"}), "expires_at": time.time() - 1})
    with pytest.raises(Unauthorized, match="'short' expired.*rbee keys create short"):
        store.authenticate(old)
    with pytest.raises(KeyExists):
        await store.create(key_settings({"name": "app"}))
    with pytest.raises(KeyNotFound, match="No key named 'nobody' \\(keys: app, short\\)"):
        await store.revoke("nobody")
    await store.close()
    reopened = KeyStore(tmp_path / "keys.db")  # revocations survive a restart
    await reopened.open()
    with pytest.raises(Unauthorized, match="was revoked"):
        reopened.authenticate(second)
    assert reopened.authenticate(again).name == "app"
    await reopened.close()


@pytest.mark.parametrize("body, field", [
    ({}, "name"), ({"name": "has space"}, "name"), ({"name": "-dash"}, "name"), ({"name": "x" * 65}, "name"),
    ({"name": "a", "scope": "root"}, "scope"), ({"name": "a", "models": []}, "models"),
    ({"name": "a", "models": [1]}, "models"), ({"name": "a", "tokens_per_day": 0}, "tokens_per_day"),
    ({"name": "a", "requests_per_minute": "9"}, "requests_per_minute"), ({"name": "a", "max_concurrent": True},
                                                                         "max_concurrent"),
    ({"name": "a", "expires": "30 days"}, "expires"), ({"name": "a", "expires": "0d"}, "expires"),
])
def test_bad_settings_name_the_field(body, field):
    with pytest.raises(InvalidRequest) as err:
        key_settings(body)
    assert err.value.field == field and field in err.value.message


def test_unknown_fields_and_durations():
    with pytest.raises(InvalidRequest, match="Unknown field\\(s\\) budget"):
        key_settings({"name": "a", "budget": 5})
    assert [parse_duration(d) for d in ("90m", "12h", "30d", "2w")] == [5400, 43200, 2592000, 1209600]
