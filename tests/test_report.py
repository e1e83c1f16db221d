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


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="Debian's chromium is not installed"
)
def test_chromium_renders_without_network(report_html, tmp_path):
    script = Path(__file__).resolve().parent.parent / "scripts" / "report_screenshot.sh"
    res = subprocess.run(
        ["bash", str(script), str(report_html), str(tmp_path / "shot.png")], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "shot.png").stat().st_size > 10_000


def test_charts_read_at_a_glance(finished_run):
    """issue 25: the probe's agreement for M1 and M2 is one line across iterations (not one series per
    model version), with 95% interval bars, the chance line and a 0-100 axis; the frozen set's drift
    has its own chart; axes that count iterations or steps tick at whole numbers only."""
    import matplotlib.pyplot as plt

    from mrtk.present.report import collect, sections

    d = collect(next((finished_run / "runs").iterdir()))
    probe = [
        {
            "eval": "probe:probe_human",
            "iteration": it,
            "judge": f"judge_additive5:structured:M{it + 1}",
            "metric": "agreement",
            "value": v,
            "ci_low": v - 0.1,
            "ci_high": v + 0.1,
            "n": 200,
        }
        for it, v in ((0, 0.38), (1, 0.48))
    ]
    drift = [
        {
            "eval": "frozen",
            "iteration": it,
            "judge": "j",
            "metric": "mean_shift",
            "value": v,
            "ci_low": v - 0.2,
            "ci_high": v + 0.2,
            "n": 16,
        }
        for it, v in ((0, 0.0), (1, 0.3))
    ]
    by_key = {s.key: s for s in sections(dict(d, eval=probe + drift))}
    ax = by_key["eval"].figure.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "chance",
        "probe:probe_human agreement (judge_additive5:structured)",
    ]
    [series] = ax.containers  # one errorbar container: one line, with its interval bars
    data = series.lines[0]
    assert list(data.get_xdata()) == [0, 1] and list(data.get_ydata()) == pytest.approx([38.0, 48.0])
    assert series.has_yerr and ax.get_ylim() == (0.0, 100.0)
    assert [list(line.get_ydata()) for line in ax.get_lines() if line.get_label() == "chance"] == [[50, 50]]
    assert "drift" in by_key and by_key["drift"].points == 2
    for key in ("eval", "dpo", "meta_bias", "drift"):
        for a in by_key[key].figure.axes:
            ticks = [t for t in a.get_xticks() if a.get_xlim()[0] <= t <= a.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), (key, ticks)
    plt.close("all")
