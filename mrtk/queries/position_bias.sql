-- First-position win share per iteration: the meta-judge's battles and pairwise judges' games (0.5 = no position bias).
-- param iteration: only this iteration (default: all)
SELECT iteration, 'meta_judge' AS judge, template, count(*) AS verdicts,
       sum((verdict = 'A')::INTEGER) AS first_position_wins,
       round(avg((verdict = 'A')::INTEGER), 4) AS first_position_share
FROM meta_judgements
WHERE verdict IS NOT NULL AND ($iteration::INTEGER IS NULL OR iteration = $iteration::INTEGER)
GROUP BY ALL
UNION ALL
SELECT iteration, 'pairwise' AS judge, template, count(*), sum((verdict = 'A')::INTEGER),
       round(avg((verdict = 'A')::INTEGER), 4)
FROM pairwise_judgements
WHERE verdict IS NOT NULL AND ($iteration::INTEGER IS NULL OR iteration = $iteration::INTEGER)
GROUP BY ALL
ORDER BY iteration, judge, template
