-- Ground truth per iteration (prompts with IFEval checks): pass rates, judge and meta-judge accuracy, right pairs, each with its 95% interval (evals/truth.py).
-- param iteration: only this model iteration (default: all)
SELECT iteration, judge, metric, round(value, 4) AS value, round(ci_low, 4) AS ci_low, round(ci_high, 4) AS ci_high, n
FROM eval_results
WHERE eval = 'truth' AND ($iteration::INTEGER IS NULL OR iteration = $iteration::INTEGER)
ORDER BY iteration, metric
