-- Meta-judge score bias per iteration: of the battles between judgements with different scores, the share won by the higher-scored one.
-- param iteration: only this iteration (default: all)
SELECT m.iteration, m.template, count(*) AS battles_with_score_gap,
       sum(((m.verdict = 'A') = (ja.score > jb.score))::INTEGER) AS higher_score_wins,
       round(avg(((m.verdict = 'A') = (ja.score > jb.score))::INTEGER), 4) AS higher_score_win_share
FROM meta_judgements m
JOIN judgements ja ON ja.judgement_id = m.judgement_a
JOIN judgements jb ON jb.judgement_id = m.judgement_b
WHERE m.verdict IS NOT NULL AND ja.score IS NOT NULL AND jb.score IS NOT NULL AND ja.score <> jb.score
  AND ($iteration::INTEGER IS NULL OR m.iteration = $iteration::INTEGER)
GROUP BY ALL
ORDER BY m.iteration, m.template
