-- Budgeted runs: what a run covered, why it stopped early, the order a budgeted run
-- checks its keys in, and each key's next charge date when the source gives one.
ALTER TABLE reconcile_runs ADD COLUMN keys_checked BIGINT;
ALTER TABLE reconcile_runs ADD COLUMN budget_stop VARCHAR(32);

-- A budgeted run's keys in priority order (never checked, failed, due soon, oldest check).
CREATE TABLE run_queue (
    run_id       BIGINT       NOT NULL,
    shard_index  INTEGER      NOT NULL,
    queue_pos    BIGINT       NOT NULL,
    payer_id     VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    PRIMARY KEY (run_id, shard_index, queue_pos)
);

-- The next charge date (YYYY-MM-DD) of a run's keys, from --due-column.
CREATE TABLE run_key_due (
    run_id       BIGINT       NOT NULL,
    payer_id     VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    due_on       VARCHAR(10)  NOT NULL,
    PRIMARY KEY (run_id, payer_id)
);
