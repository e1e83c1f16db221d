"""Where the shipped assets (prompts/, experiments/, data/) live.

In a wheel they are copied into `mrtk/_assets/`; in a source checkout or an editable
install they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    for candidate in (_PKG / "_assets" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    return _PKG / "_assets" / name
