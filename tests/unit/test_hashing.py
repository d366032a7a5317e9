"""The hive's file hashing stops when its job is cancelled instead of reading on in a thread."""

from __future__ import annotations

import hashlib
import threading

from hive.models import sha256_of


def test_sha256_of_a_file_and_stopping_it(tmp_path):
    path = tmp_path / "blob"
    data = b"rbee" * 600_000  # a few chunks
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()
    stop = threading.Event()
    stop.set()
    assert sha256_of(path, stop) is None
