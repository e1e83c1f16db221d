"""When two numbers count as equal: one tolerance per kind of number, and why it is that size.

- EXACT: sums and means of a few parsed scores or probabilities (rewards, tier bounds, score gaps,
  variances, a soft verdict's distance from 0.5). Equal values differ only by float rounding.
- ELO: Bradley-Terry ratings from an iterative fit, which converges to about this.
- EVEN_SCORE: judge health on human pairs: the structured judge's mean scores are continuous
  expectations, so two answers closer than this are a tie the judge did not decide.
- EVEN_VERDICT: the study's ties: an order-averaged soft verdict this close to 0.5 is even.
"""

from __future__ import annotations

EXACT = 1e-9
ELO = 1e-6
EVEN_SCORE = 0.1
EVEN_VERDICT = 0.05
