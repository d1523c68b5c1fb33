"""The one way edged opens its SQLite stores: WAL, ``synchronous=FULL``, explicit transactions.

Every store (segment index, events, outbox) is a ``Store``: a connection shared by the daemon's
threads behind a lock, and ``tx()`` for an immediate transaction that commits or rolls back.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Store:
    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed row survives a power cut
            self._db.execute("PRAGMA foreign_keys=ON")
            self._check()
            self._db.executescript(schema)
        except BaseException:
            self._db.close()
            raise

    def _check(self) -> None:
        """Hook for stores that verify the file before use."""

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()
