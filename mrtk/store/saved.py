"""Saved analysis queries: `mrtk query @name -p key=value`.

Each is a file `mrtk/queries/<name>.sql` whose leading `--` comment lines say what it shows
and which parameters it takes (`-- param NAME: help`). Every parameter is optional: an
omitted one is NULL, and the SQL treats NULL as "all".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mrtk.errors import MrtkError

QUERY_DIR = Path(__file__).resolve().parent.parent / "queries"
_PARAM = re.compile(r"^--\s*param\s+([A-Za-z_]\w*)\s*:\s*(.*)$")


@dataclass(frozen=True)
class SavedQuery:
    name: str
    description: str
    params: dict[str, str]  # name -> help
    sql: str


def saved_queries() -> dict[str, SavedQuery]:
    return {p.stem: _read(p) for p in sorted(QUERY_DIR.glob("*.sql"))}


def _read(path: Path) -> SavedQuery:
    text = path.read_text(encoding="utf-8")
    description, params = [], {}
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        m = _PARAM.match(line)
        if m:
            params[m.group(1)] = m.group(2).strip()
        else:
            description.append(line.lstrip("-").strip())
    return SavedQuery(path.stem, " ".join(description), params, text)


def resolve_saved(name: str, given: dict[str, str]) -> tuple[str, dict[str, str | None]]:
    """(SQL, parameters with every declared one present) for `@name`."""
    queries = saved_queries()
    if name not in queries:
        raise MrtkError(
            f"no saved query @{name}; saved queries: {', '.join('@' + q for q in queries)} (list them with: mrtk query --list)"
        )
    q = queries[name]
    unknown = sorted(set(given) - set(q.params))
    if unknown:
        takes = ", ".join(q.params) or "no parameters"
        raise MrtkError(f"@{name} takes no parameter {unknown[0]!r}; it takes: {takes}")
    return q.sql, {p: given.get(p) for p in q.params}
