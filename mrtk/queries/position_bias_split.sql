-- The paper's Table 5: the meta-judge's first-position win share per iteration, split into battles between judgements with the same score and with different scores.
-- param iteration: only this iteration (default: all)
SELECT m.iteration, m.template,
       CASE WHEN ja.score = jb.score THEN 'same score' ELSE 'different score' END AS judgement_scores,
       count(*) AS verdicts,
       sum((m.verdict = 'A')::INTEGER) AS first_position_wins,
       round(avg((m.verdict = 'A')::INTEGER), 4) AS first_position_share
FROM meta_judgements m
JOIN judgements ja ON ja.judgement_id = m.judgement_a
JOIN judgements jb ON jb.judgement_id = m.judgement_b
WHERE m.verdict IS NOT NULL AND ja.score IS NOT NULL AND jb.score IS NOT NULL
  AND ($iteration::INTEGER IS NULL OR m.iteration = $iteration::INTEGER)
GROUP BY ALL
ORDER BY m.iteration, m.template, judgement_scores DESC
