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

WAL_LIMIT_BYTES = 512 * 1024


def open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes: for the operator's commands, which must work on a card that
    went read-only. ``mode=ro`` still sees a WAL; on a read-only file system where SQLite cannot
    open the WAL's shared memory, ``immutable=1`` reads the main file (what was checkpointed)."""
    for query in ("mode=ro", "immutable=1"):
        db = sqlite3.connect(
            f"file:{path}?{query}", uri=True, timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
    raise sqlite3.OperationalError(f"{path}: cannot be opened read-only")


class Store:
    def __init__(self, path: Path, schema: str, read_only: bool = False, exclusive: bool = False) -> None:
        """``exclusive``: no other connection may use the file while this one is open; SQLite then
        keeps the WAL index in memory and needs no ``-shm`` file, which a full disk cannot allocate."""
        self.path = path
        self._lock = threading.RLock()
        self.read_only = read_only
        if read_only:
            self._db = open_read_only(path)
            return
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            if exclusive:
                self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed row survives a power cut
            # Bounded journals: checkpoint every ~400 KB of WAL and truncate it back afterwards,
            # so the stores' disk use stays small and predictable next to the ring buffer.
            self._db.execute("PRAGMA wal_autocheckpoint=100")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
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
    def tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """An immediate transaction. ``durable=False``: its commit is not fsynced (WAL with
        ``synchronous=NORMAL``: consistent, visible at once, survives a kill -9); it reaches the
        disk with the next durable commit or checkpoint, and a power cut before then undoes it.
        Only for rows the next start rebuilds anyway: an fsync of the WAL rewrites its last,
        partly filled page, and the card wears by each one."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()
