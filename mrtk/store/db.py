"""The run database's mechanics: connections, migrations, bulk writes, read-only opening.
What the loop and the commands ask of a run's data are verbs on `RunStore` (store/run.py).

DuckDB lets one process hold a file read-write and then no other process may open it, not
even read-only (docs/CPU_NOTES.md). So the writer never holds the file across model work: each
write opens a connection, runs one transaction and closes (a few ms), and `mrtk query` in
another process retries briefly until it gets in. Bulk inserts go through Arrow tables.
"""

from __future__ import annotations

import errno
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pyarrow as pa

from mrtk import faults
from mrtk.errors import MrtkError
from mrtk.store.migrations import MIGRATIONS

DB_NAME = "mrtk.duckdb"
_LOCK_WORDS = ("lock", "conflicting")


def _is_lock_error(e: Exception) -> bool:
    return any(w in str(e).lower() for w in _LOCK_WORDS)


def is_write_failure(e: BaseException) -> bool:
    """Disk full, file size limit or quota: the write failed, the data before it did not."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    text = str(e).lower()
    return any(w in text for w in ("no space left", "file too large", "disk quota", "could not write"))


def _connect(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as e:
            if _is_lock_error(e) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            if _is_lock_error(e):
                raise MrtkError(
                    f"database {path} stayed locked by another process for {wait_s:.0f}s; try again, or stop the other writer"
                ) from None
            raise MrtkError(
                f"cannot open database {path} ({' '.join(str(e).split())[:160]}); is it a DuckDB file written by mrtk?"
            ) from None


def _jsonable(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


# DuckDB column types -> Arrow types, so Arrow does not infer each column by scanning it (for
# a million strings, inference was ~15x the typed build); other types are inferred.
_ARROW_TYPES = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
}


def _column(values: list, duck_type: str | None = None) -> pa.Array:
    """A column as an Arrow array of the table's type: JSON columns (dicts, lists) as JSON text."""
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, (dict, list, tuple)):
        values = [_jsonable(v) for v in values]
    arrow_type = _ARROW_TYPES.get(duck_type or "")
    try:
        return pa.array(values, type=arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # a value of another type: let DuckDB cast or refuse it
        return pa.array(values)


def _columns(rows: list[dict]) -> dict[str, list]:
    """{column: values} over all rows' keys (None where a row lacks one). Rows that all have the
    first row's keys, the usual case, take a fast path without a per-row key scan."""
    cols = list(rows[0])
    if set(map(len, rows)) == {len(cols)}:
        try:
            return {c: [r[c] for r in rows] for c in cols}
        except KeyError:  # the same count of keys, not the same keys
            pass
    return {c: [r.get(c) for r in rows] for c in dict.fromkeys(k for r in rows for k in r)}


class Database:
    """Read-write access to one run's database, a short transaction at a time."""

    def __init__(self, run_dir: Path, wait_s: float = 60.0):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.wait_s = wait_s

    @contextmanager
    def tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = _connect(self.path, read_only=False, wait_s=self.wait_s)
        try:
            con.execute("BEGIN TRANSACTION").fetchall()
            yield con
            faults.point("db.commit")
            con.execute("COMMIT").fetchall()
        except BaseException as e:
            try:
                con.execute("ROLLBACK").fetchall()
            except duckdb.Error:
                pass
            if isinstance(e, duckdb.Error) and is_write_failure(e):
                raise MrtkError(
                    f"writing {self.path} failed ({' '.join(str(e).split())[-120:]}); the last transaction was "
                    f"rolled back and nothing before it is lost: free disk space, then: mrtk run --resume {self.run_dir}"
                ) from None
            raise
        finally:
            con.close()

    def migrate(self) -> list[str]:
        """Apply the migrations this database lacks; refuse one from a newer mrtk."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        known = [name for name, _ in MIGRATIONS]
        with self.tx() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP DEFAULT current_timestamp)"
            ).fetchall()
            applied = [r[0] for r in con.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()]
            newer = sorted(set(applied) - set(known))
            if newer:
                raise MrtkError(
                    f"database {self.path} has schema {newer[-1]}, newer than this mrtk knows ({known[-1]}); upgrade mrtk to open it"
                )
            done = []
            for name, sql in MIGRATIONS:
                if name not in applied:
                    con.execute(sql).fetchall()
                    con.execute("INSERT INTO schema_migrations (name) VALUES (?)", [name]).fetchall()
                    done.append(name)
        return done

    @staticmethod
    def insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict]) -> int:
        """Bulk insert by column name; rows whose primary key exists are skipped (idempotent)."""
        if not rows:
            return 0
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", [table]
            ).fetchall()
        )
        data = pa.table({c: _column(values, types.get(c)) for c, values in _columns(rows).items()})
        con.register("_mrtk_rows", data)
        try:
            before = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            con.execute(f"INSERT OR IGNORE INTO {table} BY NAME SELECT * FROM _mrtk_rows").fetchall()
            after = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        finally:
            con.unregister("_mrtk_rows")
        return after - before

    def write(self, table: str, rows: list[dict]) -> int:
        with self.tx() as con:
            return self.insert(con, table, rows)

    def write_replace(self, table: str, key: str, rows: list[dict]) -> int:
        """Insert rows, replacing any stored rows with the same `key` (one transaction)."""
        with self.tx() as con:
            con.execute(
                f"DELETE FROM {table} WHERE {key} IN (SELECT unnest(?::VARCHAR[]))", [[r[key] for r in rows]]
            ).fetchall()
            return self.insert(con, table, rows)

    def fetch(self, sql: str, params: list | None = None) -> list[dict]:
        with self.tx() as con:
            return dict_rows(con.execute(sql, params or []))


def dict_rows(cur) -> list[dict]:
    """All rows of an executed statement as {column: value} dicts."""
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


def open_readonly(path: Path, wait_s: float = 30.0) -> duckdb.DuckDBPyConnection:
    """A read-only connection. A database written by an older mrtk is first brought up to this
    schema (one short write: the views the readers use live in the migrations)."""
    if not path.is_file():
        raise MrtkError(f"no run database at {path}; run `mrtk run` first or pass --run RUN_DIR")
    con = _connect(path, read_only=True, wait_s=wait_s)
    try:
        applied = {r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall()}
    except duckdb.Error:  # not an mrtk database (or an empty one): the reader's own query says what is wrong
        return con
    if {name for name, _ in MIGRATIONS} <= applied:
        return con
    con.close()
    Database(path.parent).migrate()
    return _connect(path, read_only=True, wait_s=wait_s)
