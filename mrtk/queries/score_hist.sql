-- Judge score histogram per iteration and judge set (scores rounded to the nearest point).
-- param iteration: only this iteration (default: all)
-- param template: only this judge template name (default: all)
SELECT iteration, template, score_mode, source, round(score)::INTEGER AS score, count(*) AS n,
       round(count(*) / sum(count(*)) OVER (PARTITION BY iteration, template, score_mode, source), 4) AS share
FROM judgements
WHERE score IS NOT NULL
  AND ($iteration::INTEGER IS NULL OR iteration = $iteration::INTEGER)
  AND ($template::VARCHAR IS NULL OR template = $template::VARCHAR)
GROUP BY 1, 2, 3, 4, 5
ORDER BY iteration, template, score_mode, source, score
