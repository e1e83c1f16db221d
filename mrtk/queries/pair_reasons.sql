-- Where the training data went: pairs kept or dropped, by iteration, kind and reason.
-- param iteration: only this iteration (default: all)
-- param kind: actor or judge (default: both)
SELECT iteration, kind, status, reason, n
FROM iteration_pairs
WHERE ($iteration::INTEGER IS NULL OR iteration = $iteration::INTEGER)
  AND ($kind::VARCHAR IS NULL OR kind = $kind::VARCHAR)
ORDER BY iteration, kind, status DESC, n DESC, reason
