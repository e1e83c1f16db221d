"""DuckDB storage: one file per run directory (`runs/<run_id>/mrtk.duckdb`)."""

from mrtk.store.db import RunStore, open_readonly

__all__ = ["RunStore", "open_readonly"]
