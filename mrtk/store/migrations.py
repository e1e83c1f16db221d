"""Numbered schema migrations. Never edit an applied one: add m00N below.

`schema_migrations` records the names applied. A database holding a migration this mrtk
does not know was written by a newer mrtk and is refused rather than guessed at.
"""

from __future__ import annotations

M001_INITIAL = """
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY, status VARCHAR NOT NULL, created_at TIMESTAMP, updated_at TIMESTAMP,
    config JSON, config_path VARCHAR, seed BIGINT, versions JSON, git_rev VARCHAR, base_model VARCHAR,
    iterations INTEGER, error VARCHAR
);
CREATE TABLE stages (
    iteration INTEGER, stage VARCHAR, status VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP,
    seconds DOUBLE, summary JSON, PRIMARY KEY (iteration, stage)
);
CREATE TABLE prompts (
    iteration INTEGER, prompt_id VARCHAR, text VARCHAR, source VARCHAR, n_tokens INTEGER,
    PRIMARY KEY (iteration, prompt_id)
);
CREATE TABLE responses (
    response_id VARCHAR PRIMARY KEY, iteration INTEGER, prompt_id VARCHAR, sample_idx INTEGER,
    text VARCHAR, n_chars INTEGER, n_tokens INTEGER, finish_reason VARCHAR,
    is_duplicate BOOLEAN, duplicate_of VARCHAR, template VARCHAR, template_hash VARCHAR,
    model_version VARCHAR, sampling JSON, seed BIGINT, latency_s DOUBLE, created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE judgements (
    judgement_id VARCHAR PRIMARY KEY, iteration INTEGER, response_id VARCHAR, prompt_id VARCHAR, sample_idx INTEGER,
    raw_text VARCHAR NOT NULL, text VARCHAR, score DOUBLE, parse_status VARCHAR, parse_reason VARCHAR,
    score_mode VARCHAR, score_probs JSON, score_mass DOUBLE, n_chars INTEGER, n_tokens INTEGER,
    finish_reason VARCHAR, template VARCHAR, template_hash VARCHAR, model_version VARCHAR, sampling JSON,
    seed BIGINT, latency_s DOUBLE, created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE meta_judgements (
    meta_id VARCHAR PRIMARY KEY, iteration INTEGER, prompt_id VARCHAR, response_id VARCHAR,
    judgement_a VARCHAR, judgement_b VARCHAR, raw_text VARCHAR NOT NULL, verdict VARCHAR, winner VARCHAR,
    parse_status VARCHAR, parse_reason VARCHAR, p_a DOUBLE, mode VARCHAR, show_scores BOOLEAN,
    template VARCHAR, template_hash VARCHAR, model_version VARCHAR, sampling JSON, seed BIGINT,
    n_tokens INTEGER, latency_s DOUBLE, created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE elo (
    iteration INTEGER, prompt_id VARCHAR, response_id VARCHAR, judgement_id VARCHAR, elo DOUBLE,
    weighted_wins DOUBLE, weighted_losses DOUBLE, w1 DOUBLE, w2 DOUBLE, PRIMARY KEY (iteration, judgement_id)
);
CREATE TABLE pairs (
    pair_id VARCHAR PRIMARY KEY, iteration INTEGER, kind VARCHAR, prompt_id VARCHAR, response_id VARCHAR,
    chosen_id VARCHAR, rejected_id VARCHAR, chosen_score DOUBLE, rejected_score DOUBLE,
    chosen_chars INTEGER, rejected_chars INTEGER, chosen_elo DOUBLE, rejected_elo DOUBLE,
    status VARCHAR, reason VARCHAR, n_tokens INTEGER
);
CREATE TABLE train_metrics (
    iteration INTEGER, step INTEGER, epoch DOUBLE, loss DOUBLE, reward_margin DOUBLE, reward_accuracy DOUBLE,
    reward_chosen DOUBLE, reward_rejected DOUBLE, logp_chosen DOUBLE, logp_rejected DOUBLE,
    learning_rate DOUBLE, grad_norm DOUBLE, logged_at DOUBLE, PRIMARY KEY (iteration, step)
);
CREATE TABLE lineage (
    iteration INTEGER PRIMARY KEY, base_model VARCHAR, output_model VARCHAR, pairs_in INTEGER,
    pairs_trained INTEGER, pairs_dropped_too_long INTEGER, stats JSON, finished_at TIMESTAMP
);
"""

# Judge experiments (`mrtk judge`): re-judgements sit beside the loop's, marked by `source`;
# pairwise templates judge two responses of one prompt at a time.
M002_JUDGE_EXPERIMENTS = """
ALTER TABLE judgements ADD COLUMN source VARCHAR DEFAULT 'loop';
CREATE TABLE pairwise_judgements (
    judgement_id VARCHAR PRIMARY KEY, iteration INTEGER, prompt_id VARCHAR, response_a VARCHAR, response_b VARCHAR,
    raw_text VARCHAR NOT NULL, verdict VARCHAR, winner VARCHAR, p_a DOUBLE, parse_status VARCHAR, parse_reason VARCHAR,
    score_mode VARCHAR, template VARCHAR, template_hash VARCHAR, model_version VARCHAR, sampling JSON, seed BIGINT,
    n_tokens INTEGER, latency_s DOUBLE, created_at TIMESTAMP DEFAULT current_timestamp
);
"""

# Evaluations (`mrtk eval`): external calls (cache and cost ledger), the policy's eval outputs,
# one row per judged item, and the results per eval, iteration and judge.
M003_EVALS = """
CREATE TABLE eval_calls (
    call_key VARCHAR PRIMARY KEY, model VARCHAR, api_base VARCHAR, messages JSON, raw_reply VARCHAR, status VARCHAR,
    error VARCHAR, prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd DOUBLE, latency_s DOUBLE, attempts INTEGER,
    created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE eval_outputs (
    output_id VARCHAR PRIMARY KEY, eval VARCHAR, iteration INTEGER, example_id VARCHAR, instruction VARCHAR, output VARCHAR,
    n_chars INTEGER, n_tokens INTEGER, finish_reason VARCHAR, model_version VARCHAR, sampling JSON, seed BIGINT,
    latency_s DOUBLE, created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE eval_items (
    item_id VARCHAR PRIMARY KEY, eval VARCHAR, iteration INTEGER, example_id VARCHAR, slot VARCHAR, judge VARCHAR,
    call_key VARCHAR, raw_text VARCHAR, score DOUBLE, verdict VARCHAR, preference DOUBLE, label VARCHAR,
    parse_status VARCHAR, parse_reason VARCHAR, cache_hit BOOLEAN, cost_usd DOUBLE, created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE eval_results (
    eval VARCHAR, iteration INTEGER, judge VARCHAR, metric VARCHAR, value DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
    n INTEGER, details JSON, created_at TIMESTAMP DEFAULT current_timestamp, PRIMARY KEY (eval, iteration, judge, metric)
);
"""

# The generation dtype each run chose (`runtime.inference_dtype: auto` decides per machine) and
# why; for SGLang runs, the servers' versions and whether they honour sampling seeds; the
# parameters of each external call (temperature, max_tokens, logprobs) and the first token's
# top logprobs when asked for (AlpacaEval's weighted annotator).
M004_RUN_HARDWARE = """
ALTER TABLE runs ADD COLUMN inference_dtype VARCHAR;
ALTER TABLE runs ADD COLUMN inference_dtype_reason VARCHAR;
ALTER TABLE runs ADD COLUMN serving JSON;
ALTER TABLE eval_calls ADD COLUMN params JSON;
ALTER TABLE eval_calls ADD COLUMN logprobs JSON;
"""

# A stage that fails says so: `error` (or `interrupted`) with its reason, not `running` forever.
M005_STAGE_ERRORS = """
ALTER TABLE stages ADD COLUMN error VARCHAR;
"""

# Headline numbers defined once, as views (summary, report, trackers and `mrtk query` read
# them). The top score comes from the template's own range (`templates`, written by the loop
# and `mrtk judge`): score >= high - 0.5, so 4.5 on 0-5 and 9.5 on 1-10; NULL when the range is
# not recorded (runs before this migration).
M006_METRIC_VIEWS = """
CREATE TABLE templates (
    template_hash VARCHAR PRIMARY KEY, name VARCHAR, role VARCHAR, parser VARCHAR, score_low DOUBLE, score_high DOUBLE,
    body VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE VIEW iteration_judge_scores AS
SELECT j.iteration, j.source, j.template, j.template_hash, count(*) AS judgements, count(j.score) AS parsed,
       count(*) - count(j.score) AS unparsed, 1 - count(j.score) / count(*) AS unparsed_share,
       avg(j.score) AS mean_score, stddev_pop(j.score) AS score_sd, any_value(t.score_high) AS score_high,
       avg((j.score >= t.score_high - 0.5)::INT) AS top_score_share
FROM judgements j LEFT JOIN templates t ON t.template_hash = j.template_hash
GROUP BY j.iteration, j.source, j.template, j.template_hash;
CREATE VIEW iteration_meta_bias AS
SELECT m.iteration, m.template, count(*) AS battles, count(m.verdict) AS verdicts,
       avg((m.verdict = 'A')::INT) AS first_position_share,
       avg(CASE WHEN ja.score <> jb.score THEN ((m.verdict = 'A') = (ja.score > jb.score))::INT END) AS higher_score_share
FROM meta_judgements m LEFT JOIN judgements ja ON ja.judgement_id = m.judgement_a
LEFT JOIN judgements jb ON jb.judgement_id = m.judgement_b
GROUP BY m.iteration, m.template;
CREATE VIEW iteration_pairs AS
SELECT iteration, kind, status, reason, count(*) AS n FROM pairs GROUP BY iteration, kind, status, reason;
"""

# Anchored rejection (pairs.rejected_from: initial): M1's samples of each later iteration's
# prompts, the same columns as `responses`, kept apart so every reader of M_t's responses stays as it was.
M007_ANCHORS = """
CREATE TABLE anchor_responses (
    response_id VARCHAR PRIMARY KEY, iteration INTEGER, prompt_id VARCHAR, sample_idx INTEGER,
    text VARCHAR, n_chars INTEGER, n_tokens INTEGER, finish_reason VARCHAR,
    is_duplicate BOOLEAN, duplicate_of VARCHAR, template VARCHAR, template_hash VARCHAR,
    model_version VARCHAR, sampling JSON, seed BIGINT, latency_s DOUBLE, created_at TIMESTAMP DEFAULT current_timestamp
);
"""

# Ground truth (prompts with IFEval instructions): each prompt's checks; each response's verdict
# (IFEval's strict and loose checks: string work, recomputable from the text); M_t's answers to the
# held-out verifiable slice, the same columns as `responses`, kept apart from the loop's rows.
M008_TRUTH = """
ALTER TABLE prompts ADD COLUMN checks JSON;
CREATE TABLE verdicts (
    response_id VARCHAR PRIMARY KEY, source VARCHAR, iteration INTEGER, prompt_id VARCHAR, strict BOOLEAN, loose BOOLEAN,
    partial_strict DOUBLE, partial_loose DOUBLE, per_instruction JSON, created_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE heldout_responses (
    response_id VARCHAR PRIMARY KEY, iteration INTEGER, prompt_id VARCHAR, sample_idx INTEGER,
    text VARCHAR, n_chars INTEGER, n_tokens INTEGER, finish_reason VARCHAR,
    is_duplicate BOOLEAN, duplicate_of VARCHAR, template VARCHAR, template_hash VARCHAR,
    model_version VARCHAR, sampling JSON, seed BIGINT, latency_s DOUBLE, created_at TIMESTAMP DEFAULT current_timestamp
);
"""

# Future-guided chosen (pairs.chosen_from: future): the samples of each iteration's temporary next
# model, the same columns as `responses`, kept apart like the anchors.
M009_FUTURE = """
CREATE TABLE future_responses (
    response_id VARCHAR PRIMARY KEY, iteration INTEGER, prompt_id VARCHAR, sample_idx INTEGER,
    text VARCHAR, n_chars INTEGER, n_tokens INTEGER, finish_reason VARCHAR,
    is_duplicate BOOLEAN, duplicate_of VARCHAR, template VARCHAR, template_hash VARCHAR,
    model_version VARCHAR, sampling JSON, seed BIGINT, latency_s DOUBLE, created_at TIMESTAMP DEFAULT current_timestamp
);
"""

MIGRATIONS: list[tuple[str, str]] = [
    ("m001_initial", M001_INITIAL),
    ("m002_judge_experiments", M002_JUDGE_EXPERIMENTS),
    ("m003_evals", M003_EVALS),
    ("m004_run_hardware", M004_RUN_HARDWARE),
    ("m005_stage_errors", M005_STAGE_ERRORS),
    ("m006_metric_views", M006_METRIC_VIEWS),
    ("m007_anchors", M007_ANCHORS),
    ("m008_truth", M008_TRUTH),
    ("m009_future", M009_FUTURE),
]
