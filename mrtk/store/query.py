"""`mrtk query`: read-only SQL over a run database, as a table, CSV or JSON.

The connection is opened read-only, so no statement can change the run's data; a write
statement is refused with a one-line error. While a run is writing, the query waits for the
writer's short transaction to end (see `store/db.py`), then reads a committed state.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb

from mrtk.errors import MrtkError
from mrtk.store.db import open_readonly


def run_query(db: Path, sql: str, params: dict | None = None) -> tuple[list[str], list[tuple]]:
    if not sql.strip():
        raise MrtkError('query: empty SQL; pass a statement, e.g. mrtk query "select count(*) from judgements"')
    con = open_readonly(db)
    try:
        cur = con.execute(sql, params or None)
        if cur.description is None:
            return [], []
        cols = [d[0] for d in cur.description]
        return cols, cur.fetchall()
    except duckdb.Error as e:
        msg = " ".join(str(e).split())
        if "read-only" in msg.lower() or "read only" in msg.lower():
            raise MrtkError(
                "query: the run database is read-only to `mrtk query`; use SELECT statements only"
            ) from None
        raise MrtkError(f"query: {msg[:300]}") from None
    finally:
        con.close()


def _plain(v):
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    return v


def as_csv(cols: list[str], rows: list[tuple]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    w.writerows([[_plain(v) for v in r] for r in rows])
    return buf.getvalue()


def as_json(cols: list[str], rows: list[tuple]) -> str:
    return json.dumps([{c: _plain(v) for c, v in zip(cols, r)} for r in rows], indent=1, default=str)
