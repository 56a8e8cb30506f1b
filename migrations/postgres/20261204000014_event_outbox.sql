-- Per-key events (billing_key.gone, ...) waiting for, or done with, delivery to the
-- merchant's endpoint: the outbox. An event's id is its Standard Webhooks `webhook-id`,
-- the same on every attempt. `payer_sha256` (the hex SHA-256 of the key) orders a key's
-- events; the key itself is never stored here. States: pending, delivered, expired.
CREATE TABLE event_outbox (
    event_id        VARCHAR(64) NOT NULL PRIMARY KEY,
    run_id          BIGINT       NOT NULL,
    payer_sha256    VARCHAR(64) NOT NULL,
    event_type      VARCHAR(64)  NOT NULL,
    created_at      VARCHAR(40)  NOT NULL,
    payload         TEXT NOT NULL,
    state           VARCHAR(16)  NOT NULL,
    attempts        INTEGER      NOT NULL DEFAULT 0,
    last_attempt_at VARCHAR(40),
    last_error      VARCHAR(255),
    done_at         VARCHAR(40)
);
CREATE INDEX event_outbox_by_state ON event_outbox (state, run_id, payer_sha256);

-- The completed runs whose events are in the outbox (a run with no change has a row and
-- no event). A completed run without a row has its events written by the next run or
-- `events deliver`; the runs completed before this table existed are marked here, so an
-- upgraded database sends nothing about past nights.
CREATE TABLE event_runs (
    run_id      BIGINT      NOT NULL PRIMARY KEY,
    events      BIGINT      NOT NULL,
    written_at  VARCHAR(40) NOT NULL
);
INSERT INTO event_runs (run_id, events, written_at)
    SELECT id, 0, COALESCE(finished_at, started_at) FROM reconcile_runs WHERE state = 'completed';
