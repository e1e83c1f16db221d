"""DuckDB storage: one file per run directory (`runs/<run_id>/mrtk.duckdb`)."""

from mrtk.store.db import open_readonly
from mrtk.store.run import RunStore

__all__ = ["RunStore", "open_readonly"]
