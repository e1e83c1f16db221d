"""The run database: migrations, idempotent bulk inserts, read-only queries (real DuckDB)."""

import duckdb
import pytest

from mrtk.errors import MrtkError
from mrtk.store import RunStore
from mrtk.store.migrations import MIGRATIONS
from mrtk.store.query import as_csv, as_json, run_query


@pytest.fixture()
def store(tmp_path):
    s = RunStore(tmp_path / "run")
    s.migrate()
    return s


def test_migrate_is_idempotent(store):
    assert store.migrate() == []
    names = [r["name"] for r in store.fetch("SELECT name FROM schema_migrations")]
    assert names == [n for n, _ in MIGRATIONS]


def test_newer_schema_refused(store):
    store.write("schema_migrations", [{"name": "m999_from_the_future"}])
    with pytest.raises(MrtkError, match="newer than this mrtk knows"):
        store.migrate()


def test_insert_skips_existing_keys(store):
    rows = [
        {"judgement_id": f"j{i}", "iteration": 1, "raw_text": "x", "score": float(i), "score_probs": {"1": 0.5}}
        for i in range(3)
    ]
    assert store.write("judgements", rows) == 3
    assert store.write("judgements", rows + [dict(rows[0], judgement_id="j9")]) == 1
    got = store.fetch("SELECT judgement_id, score, score_probs->>'1' AS p FROM judgements ORDER BY 1")
    assert [r["judgement_id"] for r in got] == ["j0", "j1", "j2", "j9"] and got[0]["p"] == "0.5"


def test_insert_takes_rows_with_different_keys_and_loose_types(store):
    """The typed Arrow build falls back cleanly: a row missing a column gets NULL, a column of
    mixed Python types (an int score next to floats, a numeric id) is inferred and cast by DuckDB."""
    rows = [
        {"judgement_id": "a", "iteration": 1, "raw_text": "x", "score": 2},
        {"judgement_id": "b", "iteration": 2, "raw_text": "y", "score": 2.5, "sample_idx": 1},
        {"judgement_id": "c", "raw_text": "z", "score": None, "iteration": 3},
    ]
    assert store.write("judgements", rows) == 3
    assert store.write("responses", [{"response_id": 7, "iteration": 1, "text": "t"}]) == 1
    got = store.fetch("SELECT judgement_id, iteration, score, sample_idx FROM judgements ORDER BY 1")
    assert [(r["iteration"], r["score"], r["sample_idx"]) for r in got] == [
        (1, 2.0, None),
        (2, 2.5, 1),
        (3, None, None),
    ]
    assert store.fetch("SELECT response_id FROM responses") == [{"response_id": "7"}]


def test_failed_transaction_leaves_nothing(store):
    with pytest.raises(RuntimeError):
        with store.tx() as con:
            store.insert(con, "responses", [{"response_id": "r1", "iteration": 1}])
            raise RuntimeError("boom")
    assert store.fetch("SELECT count(*) AS n FROM responses")[0]["n"] == 0


def test_query_read_only_and_formats(store):
    store.write("responses", [{"response_id": "r1", "iteration": 1, "text": "a,b"}])
    cols, rows = run_query(store.path, "SELECT response_id, text FROM responses")
    assert as_csv(cols, rows) == 'response_id,text\nr1,"a,b"\n'
    assert '"text": "a,b"' in as_json(cols, rows)
    cols, rows = run_query(store.path, "SELECT count(*) AS n FROM responses WHERE iteration = $it", {"it": 1})
    assert rows == [(1,)]
    with pytest.raises(MrtkError, match="read-only"):
        run_query(store.path, "DELETE FROM responses")
    with pytest.raises(MrtkError, match="query: Parser Error"):
        run_query(store.path, "SELEC nonsense")
    assert duckdb.connect(str(store.path), read_only=True).execute("SELECT count(*) FROM responses").fetchall() == [
        (1,)
    ]


def test_query_missing_database(tmp_path):
    with pytest.raises(MrtkError, match="no run database"):
        run_query(tmp_path / "nope.duckdb", "SELECT 1")


def test_upgrade_from_m001_keeps_rows_and_adds_what_later_migrations_add(tmp_path):
    """A database written by the first mrtk (m001 only) opens in this one: every later migration
    is applied, the old rows are kept, and the columns and tables they added are there."""
    from datetime import datetime

    run = tmp_path / "old"
    run.mkdir()
    con = duckdb.connect(str(run / "mrtk.duckdb"))
    con.execute(
        "CREATE TABLE schema_migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP DEFAULT current_timestamp)"
    )
    con.execute(MIGRATIONS[0][1])
    con.execute("INSERT INTO schema_migrations (name) VALUES (?)", [MIGRATIONS[0][0]])
    con.execute(
        "INSERT INTO runs (run_id, status, created_at, config) VALUES ('r-old', 'success', ?, '{}')",
        [datetime(2026, 1, 2)],
    )
    con.execute(
        "INSERT INTO judgements (judgement_id, iteration, response_id, raw_text, score) VALUES ('j1', 1, 'r1', 'Score: 4', 4.0)"
    )
    con.close()

    store = RunStore(run)
    assert store.migrate() == [n for n, _ in MIGRATIONS[1:]]
    assert store.fetch("SELECT run_id, status FROM runs") == [{"run_id": "r-old", "status": "success"}]
    assert store.fetch("SELECT judgement_id, score FROM judgements") == [{"judgement_id": "j1", "score": 4.0}]
    columns = {
        (r["table_name"], r["column_name"])
        for r in store.fetch("SELECT table_name, column_name FROM information_schema.columns")
    }
    assert {
        ("runs", "inference_dtype"),
        ("runs", "serving"),
        ("judgements", "source"),
        ("eval_calls", "logprobs"),
    } <= columns
    store.set_status("running")  # the verbs work on the upgraded database
    assert store.fetch("SELECT status FROM runs") == [{"status": "running"}]
    assert store.migrate() == []
