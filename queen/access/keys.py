"""API keys for people and apps, kept in the queen's keys.db (SQLite, 0600).

A key is shown once, when it is made (`rbee-sk-` and 32 random bytes, URL-safe); the queen keeps only its
SHA-256. Checking a key costs a dictionary lookup: every key that is not revoked is held in memory by its
hash, so a request pays microseconds, and a revoke or rotate takes effect on the next request. A key's
hash is compared in constant time, and neither a key nor its hash is ever logged or put in an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queen.access.scopes import Scope
from queen.errors import QueenError
from shared.errors import InvalidRequest, Unauthorized
from shared.sqlite import SqliteStore

KEY_PREFIX = "rbee-sk-"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
LIMITS = ("tokens_per_day", "requests_per_minute", "max_concurrent")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id                  INTEGER PRIMARY KEY,
    name                TEXT NOT NULL,
    hash                TEXT NOT NULL UNIQUE,
    scope               TEXT NOT NULL,
    models              TEXT,
    tokens_per_day      INTEGER,
    requests_per_minute INTEGER,
    max_concurrent      INTEGER,
    created_at          REAL NOT NULL,
    expires_at          REAL,
    revoked_at          REAL,
    last_used_at        REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS usage (
    key               TEXT NOT NULL,
    day               TEXT NOT NULL,    -- YYYY-MM-DD, the queen's local date
    model             TEXT NOT NULL,
    requests          INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (key, day, model)
);
"""
_COLUMNS = ("name, hash, scope, models, tokens_per_day, requests_per_minute, max_concurrent, created_at, "
            "expires_at, revoked_at, last_used_at")


class KeyNotFound(QueenError):
    title = "Key not found"
    code = "KEY_NOT_FOUND"
    status = 404


class KeyExists(QueenError):
    title = "Key exists"
    code = "KEY_EXISTS"
    status = 409


@dataclass(frozen=True)
class ApiKey:
    name: str
    hash: str
    scope: Scope
    models: tuple[str, ...] | None = None  # None: every model
    tokens_per_day: int | None = None
    requests_per_minute: int | None = None
    max_concurrent: int | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def allows_model(self, model: str | None) -> bool:
        return self.models is None or (model is not None and model in self.models)

    def public(self) -> dict[str, Any]:
        """What `rbee keys list` shows: everything but the hash."""
        out = dataclasses.asdict(self)
        del out["hash"]
        out["scope"] = str(self.scope)
        out["models"] = list(self.models) if self.models is not None else None
        return out


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `2w` -> seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", text or "")
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration: write a whole number and a unit, as 90m, 12h, 30d or 2w")
    return int(match.group(1)) * _UNITS[match.group(2)]


def key_settings(body: Any) -> dict[str, Any]:
    """The settings of a new key from a request body, each checked, with a message naming what is wrong."""
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object with at least a 'name'.")
    unknown = set(body) - {"name", "scope", "models", "expires", *LIMITS}
    if unknown:
        raise InvalidRequest(f"Unknown field(s) {', '.join(sorted(unknown))}: a key takes name, scope, models, "
                             f"expires, {', '.join(LIMITS)}.")
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidRequest(f"name: {name!r} is not a key name: 1 to 64 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit.", field="name")
    try:
        scope = Scope.parse(body.get("scope") or "infer")
    except (ValueError, AttributeError) as exc:
        raise InvalidRequest(f"scope: {exc}.", field="scope") from None
    models = body.get("models")
    if models is not None:
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",")]
        if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
            raise InvalidRequest("models: a list of model names (or one string, comma-separated), not empty.",
                                 field="models")
        models = tuple(models)
    settings: dict[str, Any] = {"name": name, "scope": scope, "models": models}
    for limit in LIMITS:
        value = body.get(limit)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InvalidRequest(f"{limit}: a whole number of at least 1, not {value!r}.", field=limit)
        settings[limit] = value
    expires = body.get("expires")
    if expires is not None:
        try:
            settings["expires_at"] = time.time() + parse_duration(str(expires))
        except ValueError as exc:
            raise InvalidRequest(f"expires: {exc}.", field="expires") from None
    return settings


class KeyStore(SqliteStore):
    """The keys, on disk and, for the ones in use, in memory by hash."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, setup=self._setup)
        self.path = path
        self._live: dict[str, ApiKey] = {}  # hash -> key, keys not revoked
        self._revoked: dict[str, ApiKey] = {}  # hash -> key, so a revoked key is told it was revoked
        self._tokens: dict[tuple[str, str], int] = {}  # (key, day) -> tokens used, today's read at open

    def _setup(self, db: sqlite3.Connection) -> None:
        os.chmod(self.path, 0o600)
        for suffix in ("-wal", "-shm"):  # made 0644 by SQLite under a default umask
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)
        db.executescript(_SCHEMA)

    async def open(self) -> None:
        old = os.umask(0o077)  # the file and its WAL are made 0600
        try:
            await super().open()
            rows = await self._db.run(lambda db: db.execute(f"SELECT {_COLUMNS} FROM api_keys").fetchall())
        finally:
            os.umask(old)
        for row in rows:
            key = _key(row)
            (self._revoked if key.revoked_at is not None else self._live)[key.hash] = key
        day = time.strftime("%Y-%m-%d")
        for name, tokens in await self._db.run(lambda db: db.execute(
                "SELECT key, SUM(prompt_tokens + completion_tokens) FROM usage WHERE day = ? GROUP BY key",
                (day,)).fetchall()):
            self._tokens[(name, day)] = tokens

    # -- usage -------------------------------------------------------------------------------------------

    def tokens_on(self, name: str, day: str) -> int:
        return self._tokens.get((name, day), 0)

    def record_usage(self, name: str, day: str, model: str, prompt: int, completion: int) -> None:
        """Add one request's usage (counted now, written in the database's thread)."""
        self._tokens[(name, day)] = self._tokens.get((name, day), 0) + prompt + completion
        self._db.submit(lambda db: db.execute(
            "INSERT INTO usage (key, day, model, requests, prompt_tokens, completion_tokens) VALUES (?, ?, ?, 1, ?, ?) "
            "ON CONFLICT (key, day, model) DO UPDATE SET requests = requests + 1, "
            "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens = completion_tokens + excluded.completion_tokens",
            (name, day, model, prompt, completion)))

    async def usage(self, name: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
        """Usage per key, day and model, the newest day first."""
        where, args = [], []
        if name is not None:
            where.append("key = ?")
            args.append(name)
        if since is not None:
            where.append("day >= ?")
            args.append(since)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._db.run(lambda db: db.execute(
            f"SELECT key, day, model, requests, prompt_tokens, completion_tokens FROM usage {clause} "
            "ORDER BY day DESC, key, model", args).fetchall())
        return [{"key": r[0], "day": r[1], "model": r[2], "requests": r[3], "prompt_tokens": r[4],
                 "completion_tokens": r[5], "total_tokens": r[4] + r[5]} for r in rows]

    # -- checking ----------------------------------------------------------------------------------------

    def authenticate(self, secret: str, now: float | None = None) -> ApiKey:
        """The live key `secret` is, or Unauthorized saying whether it is unknown, revoked or expired."""
        now = time.time() if now is None else now
        digest = hash_key(secret)
        key = self._live.get(digest)
        if key is not None and hmac.compare_digest(key.hash, digest):
            if key.expired(now):
                # Rotating keeps the expiry, so a new key it has to be.
                raise Unauthorized(f"The API key '{key.name}' expired; ask whoever runs the queen for a new one "
                                   f"(`rbee keys revoke {key.name}`, then `rbee keys create {key.name} --expires ...`).")
            if key.last_used_at is None or now - key.last_used_at > 60:  # written at most once a minute
                self._touch(key, now)
            return key
        if (gone := self._revoked.get(digest)) is not None:
            raise Unauthorized(f"The API key '{gone.name}' was revoked.")
        raise Unauthorized("Unknown API key: send a key from `rbee keys create`, or the queen's token (the "
                           "file 'token' in the rbee config dir), as 'Authorization: Bearer <key>'.")

    def _touch(self, key: ApiKey, now: float) -> None:
        touched = dataclasses.replace(key, last_used_at=now)
        self._live[key.hash] = touched
        self._db.submit(lambda db: db.execute("UPDATE api_keys SET last_used_at = ? WHERE hash = ?",
                                              (now, key.hash)))

    # -- managing ----------------------------------------------------------------------------------------

    def live(self) -> list[ApiKey]:
        return sorted(self._live.values(), key=lambda k: k.name)

    def named(self, name: str) -> ApiKey:
        for key in self._live.values():
            if key.name == name:
                return key
        known = ", ".join(k.name for k in self.live()) or "none yet"
        raise KeyNotFound(f"No key named '{name}' (keys: {known}).")

    async def create(self, settings: dict[str, Any]) -> tuple[ApiKey, str]:
        if any(k.name == settings["name"] for k in self._live.values()):
            raise KeyExists(f"A key named '{settings['name']}' exists; revoke it first, or `rbee keys rotate "
                            f"{settings['name']}` for a new secret.")
        secret = new_secret()
        key = ApiKey(hash=hash_key(secret), created_at=time.time(), **settings)
        await self._db.run(lambda db: db.execute(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _row(key)))
        self._live[key.hash] = key
        return key, secret

    async def revoke(self, name: str) -> ApiKey:
        key = self.named(name)
        revoked = dataclasses.replace(key, revoked_at=time.time())
        del self._live[key.hash]  # refused from the next request on
        self._revoked[key.hash] = revoked
        await self._db.run(lambda db: db.execute("UPDATE api_keys SET revoked_at = ? WHERE hash = ?",
                                                 (revoked.revoked_at, key.hash)))
        return revoked

    async def rotate(self, name: str) -> tuple[ApiKey, str]:
        """A new secret for the key, its settings kept; the old secret stops working now."""
        key = self.named(name)
        secret = new_secret()
        rotated = dataclasses.replace(key, hash=hash_key(secret))
        del self._live[key.hash]
        self._live[rotated.hash] = rotated
        await self._db.run(lambda db: db.execute("UPDATE api_keys SET hash = ? WHERE hash = ?",
                                                 (rotated.hash, key.hash)))
        return rotated, secret


def _row(key: ApiKey) -> tuple:
    return (key.name, key.hash, str(key.scope), json.dumps(list(key.models)) if key.models is not None else None,
            key.tokens_per_day, key.requests_per_minute, key.max_concurrent, key.created_at, key.expires_at,
            key.revoked_at, key.last_used_at)


def _key(row: tuple) -> ApiKey:
    return ApiKey(name=row[0], hash=row[1], scope=Scope.parse(row[2]),
                  models=tuple(json.loads(row[3])) if row[3] is not None else None, tokens_per_day=row[4],
                  requests_per_minute=row[5], max_concurrent=row[6], created_at=row[7], expires_at=row[8],
                  revoked_at=row[9], last_used_at=row[10])
