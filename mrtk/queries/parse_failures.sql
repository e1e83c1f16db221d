-- Unparsed model outputs per table, iteration, template and reason, with their share of that table's rows (never counted as scores).
-- param iteration: only this iteration (default: all)
WITH rows AS (
    SELECT 'judgements' AS tbl, iteration, template, parse_status, parse_reason FROM judgements
    UNION ALL SELECT 'meta_judgements', iteration, template, parse_status, parse_reason FROM meta_judgements
    UNION ALL SELECT 'pairwise_judgements', iteration, template, parse_status, parse_reason FROM pairwise_judgements
), totals AS (
    SELECT tbl, iteration, template, count(*) AS total FROM rows GROUP BY ALL
)
SELECT r.tbl AS "table", r.iteration, r.template, r.parse_reason AS reason, count(*) AS n, t.total,
       round(count(*) / t.total, 4) AS share
FROM rows r JOIN totals t USING (tbl, iteration, template)
WHERE r.parse_status <> 'ok' AND ($iteration::INTEGER IS NULL OR r.iteration = $iteration::INTEGER)
GROUP BY r.tbl, r.iteration, r.template, r.parse_reason, t.total
ORDER BY "table", r.iteration, r.template, reason
