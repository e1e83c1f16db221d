-- Length bias per iteration and judge set: Pearson correlation of judge score with response length in characters (NULL under 3 scores), and the mean score of short and long responses (split at the median length of the iteration's responses).
-- param iteration: only this iteration (default: all)
WITH medians AS (
    SELECT iteration, median(n_chars) AS median_chars FROM responses WHERE NOT is_duplicate GROUP BY 1
), j AS (
    SELECT j.iteration, j.template, j.score_mode, j.source, j.score, r.n_chars, m.median_chars
    FROM judgements j JOIN responses r USING (response_id) JOIN medians m ON m.iteration = j.iteration
    WHERE j.score IS NOT NULL AND ($iteration::INTEGER IS NULL OR j.iteration = $iteration::INTEGER)
)
SELECT iteration, template, score_mode, source, count(*) AS judgements,
       CASE WHEN count(*) >= 3 THEN round(corr(score, n_chars), 4) END AS score_length_corr,
       round(avg(score) FILTER (WHERE n_chars <= median_chars), 4) AS mean_score_short,
       round(avg(score) FILTER (WHERE n_chars > median_chars), 4) AS mean_score_long
FROM j
GROUP BY ALL
ORDER BY iteration, template, score_mode, source
