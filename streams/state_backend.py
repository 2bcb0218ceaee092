"""Where a changelog-backed store keeps one partition's entries: in memory or in a SQLite file.

``ABSYNC_STATE_BACKEND`` chooses (:func:`open_map`):

- ``memory`` (the default): a ``dict[str, bytes]``; ``items`` iterates a snapshot (a list).
- ``disk``: one SQLite file per changelog topic and partition under ``data_dir/state/``, WAL,
  ``synchronous=OFF``. The changelog stays the source of truth: the file is never reused across
  restores (a restore fills a fresh file, then the store swaps it in whole; ``close`` deletes it), so
  a crash that loses the file's tail loses nothing. Memory stays bounded by SQLite's page cache,
  whatever the number of keys. ``items`` reads in chunks of :data:`CHUNK` keys in key order,
  resuming after the last key seen: puts and deletes during the iteration are safe; an entry put
  during it may or may not be seen, one never touched is seen exactly once.

Both are safe to use from two threads (a lock around each SQLite call), as the stores need:
restore/drop on the consumer's thread, get/put on the processor's.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

CHUNK = 1000
"""Entries read per query by a disk map's ``items``."""


class PartitionMap(Protocol):
    """One partition's entries: keys are strings, values bytes."""

    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: bytes) -> None: ...
    def pop(self, key: str) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...
    def items(self) -> Iterator[tuple[str, bytes]]: ...
    def finish_load(self) -> None: ...
    def close(self) -> None: ...


class MemoryMap:
    """A ``dict``; ``items`` iterates a snapshot."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    def set(self, key: str, value: bytes) -> None:
        self._data[key] = value

    def pop(self, key: str) -> None:
        self._data.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> Iterator[tuple[str, bytes]]:
        return iter(list(self._data.items()))

    def finish_load(self) -> None:
        pass

    def close(self) -> None:
        """Nothing to free: a reader that still holds this map (another thread, as the store's
        drop allows) keeps seeing the partition whole; the dict goes with its last reference."""


class DiskMap:
    """A SQLite table ``kv(key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID`` in its own fresh file.

    While loading (before :meth:`finish_load`) writes are batched in one transaction; afterwards each
    write is its own autocommit statement (``synchronous=OFF``: no fsync).
    """

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        self.path = directory / f"{safe}.{uuid.uuid4().hex[:12]}.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA cache_size=-8000")  # 8 MB of page cache, whatever the key count
        self._db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")
        self._db.execute("BEGIN")
        self._loading = True

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set(self, key: str, value: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    def pop(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            return self._db.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM kv").fetchone()[0])

    def items(self) -> Iterator[tuple[str, bytes]]:
        last: str | None = None
        while True:
            with self._lock:
                if last is None:
                    rows = self._db.execute(
                        "SELECT key, value FROM kv ORDER BY key LIMIT ?", (CHUNK,)
                    ).fetchall()
                else:
                    rows = self._db.execute(
                        "SELECT key, value FROM kv WHERE key > ? ORDER BY key LIMIT ?", (last, CHUNK)
                    ).fetchall()
            for key, value in rows:
                yield key, bytes(value)
            if len(rows) < CHUNK:
                return
            last = rows[-1][0]

    def finish_load(self) -> None:
        with self._lock:
            if self._loading:
                self._db.execute("COMMIT")
                self._loading = False

    def close(self) -> None:
        with self._lock:
            self._db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def open_map(backend: str, data_dir: Path, topic: str, partition: int) -> PartitionMap:
    """A fresh, empty map for one partition of ``topic``, in loading mode until ``finish_load``."""
    if backend == "disk":
        return DiskMap(data_dir / "state", f"{topic}-{partition}")
    if backend == "memory":
        return MemoryMap()
    raise ValueError(f"unknown ABSYNC_STATE_BACKEND {backend!r} (memory or disk)")
