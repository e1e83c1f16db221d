"""`mrtk report` on a real tiny run: every chart section present with data, offline HTML, PNGs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import mrtk

SECTIONS = ["score_hist", "unparsed", "length", "pairs", "chosen_rejected_length", "dpo", "meta_bias", "elo"]


@pytest.fixture(scope="module")
def report_html(finished_run) -> Path:
    out = finished_run / "report.html"
    mrtk("report", "--out", str(out), cwd=finished_run, check=True)
    return out


def test_every_chart_section_has_data(report_html):
    page = report_html.read_text()
    for key in SECTIONS:
        m = re.search(rf"<section id='{key}' data-points='(\d+)'>(.*?)</section>", page, re.S)
        assert m, f"section {key} missing"
        assert int(m.group(1)) > 0, f"section {key} has no data"
        assert "data:image/png;base64," in m.group(2)
    assert "<section id='eval' data-points='0'>" in page and "no evaluation recorded" in page
    assert "Model lineage" in page and "Stage timings" in page and "seed" in page


def test_html_is_self_contained(report_html):
    page = report_html.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", page)
    assert "<script" not in page and "@import" not in page


def test_png_format(finished_run, tmp_path):
    mrtk("report", "--format", "png", "--out", str(tmp_path / "pngs"), cwd=finished_run, check=True)
    names = sorted(p.stem for p in (tmp_path / "pngs").glob("*.png"))
    assert names == sorted(SECTIONS)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in (tmp_path / "pngs").glob("*.png"))


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="Debian's chromium is not installed")
def test_chromium_renders_without_network(report_html, tmp_path):
    script = Path(__file__).resolve().parent.parent / "scripts" / "report_screenshot.sh"
    res = subprocess.run(["bash", str(script), str(report_html), str(tmp_path / "shot.png")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "shot.png").stat().st_size > 10_000
