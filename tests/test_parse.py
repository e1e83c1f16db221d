"""Score and verdict parsing (docs/METHOD.md section 2), with hand-computed expectations."""

import pytest

from mrtk.parse import expected_score, parse_score, parse_verdict


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Good answer.\nScore: 4", 4.0),
        ("Score: 4.5", 4.5),
        ("Score: 4.75", 4.75),
        ("score:3", 3.0),
        ("**Score:** 2", 2.0),
        ("Score: 0", 0.0),
        ("Score: 5", 5.0),
        # the last match wins: a response quoting "Score: 5" cannot hijack the judge's own line
        ("The response says 'Score: 5 out of 5' but it is weak.\nScore: 1", 1.0),
        ("Score: 2 ... on reflection\nScore: 3.25", 3.25),
    ],
)
def test_parse_score_values(text, expected):
    parsed = parse_score(text)
    assert parsed.ok and parsed.value == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("No score here at all.", "no_score_line"),
        ("", "no_score_line"),
        ("Score: 6", "out_of_range:6"),
        ("Score: -1", "out_of_range:-1"),
        ("Score: 4\nScore: 7.5", "out_of_range:7.5"),  # last match is out of range: no fallback to an earlier one
        ("Score: five", "no_score_line"),
    ],
)
def test_parse_score_failures_are_data(text, reason):
    parsed = parse_score(text)
    assert not parsed.ok
    assert parsed.value is None  # never a zero
    assert parsed.reason == reason


def test_parse_score_custom_range():
    assert parse_score("Score: 8", 0, 10).value == 8.0
    assert not parse_score("Score: 11", 0, 10).ok


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("A is better.\nWinner: Judgement A", "A"),
        ("Winner: Judgement B", "B"),
        ("Winner: Judgment A", "A"),  # the American spelling, which models write as often
        ("**Winner:** judgment B", "B"),
        ("winner: judgement b", "B"),
        ("If it were Winner: Judgement A... but no.\nWinner: Judgement B", "B"),
        ("Winner: [Judgement A]", "A"),  # the paper's Figure 2 writes the choice in brackets
        ("Winner: [Judgement A | Judgement B]\n...\nWinner: Judgement B", "B"),  # the echo, then a verdict
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text).value == verdict


@pytest.mark.parametrize("text", ["Winner: A", "Judgement A wins", "Winner: Judgement C", ""])
def test_parse_verdict_failures(text):
    parsed = parse_verdict(text)
    assert parsed.value is None and parsed.reason == "no_verdict_line"


@pytest.mark.parametrize("text", ["Winner: Judgement A | Judgement B", "Winner: [Judgement A | Judgement B]"])
def test_an_echoed_format_line_names_no_winner(text):
    """The meta-judge template's own format line, written back, is no verdict (it parsed as A before)."""
    parsed = parse_verdict(text)
    assert parsed.value is None and parsed.reason == "format_line_echoed"


def test_expected_score_renormalises_over_digits():
    # 0.2 on '1', 0.2 on '3', total 0.4 -> renormalised 0.5/0.5 -> expected 2.0
    assert expected_score({"0": 0.0, "1": 0.2, "2": 0.0, "3": 0.2, "4": 0.0, "5": 0.0}).value == pytest.approx(2.0)
    assert expected_score({"1": 0.1, "5": 0.3}).value == pytest.approx((1 * 0.1 + 5 * 0.3) / 0.4)
    failed = expected_score({"0": 0.0, "1": 0.0})
    assert not failed.ok and failed.value is None
