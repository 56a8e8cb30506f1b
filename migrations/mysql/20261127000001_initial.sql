-- (MySQL: payer_id compares byte for byte; Payple keys are case-sensitive base64.)
-- Runs, the keys each run set out to check, one result row per (run, key), and the
-- lease that keeps two runs from overlapping. Times are UTC RFC 3339 text.
CREATE TABLE reconcile_runs (
    id              BIGINT AUTO_INCREMENT PRIMARY KEY,
    run_key         VARCHAR(200) UNIQUE,
    started_at      VARCHAR(40)  NOT NULL,
    finished_at     VARCHAR(40),
    source          TEXT         NOT NULL,
    source_spec     TEXT         NOT NULL,
    options         TEXT         NOT NULL,
    state           VARCHAR(16)  NOT NULL,
    shard_count     INTEGER      NOT NULL DEFAULT 1,
    keys_total      BIGINT,
    duplicates      BIGINT       NOT NULL DEFAULT 0,
    active_count    BIGINT       NOT NULL DEFAULT 0,
    gone_count      BIGINT       NOT NULL DEFAULT 0,
    failed_count    BIGINT       NOT NULL DEFAULT 0,
    rejected_count  BIGINT       NOT NULL DEFAULT 0,
    auth_calls      BIGINT       NOT NULL DEFAULT 0,
    lookups         BIGINT       NOT NULL DEFAULT 0,
    exit_code       INTEGER,
    error           TEXT
);

CREATE TABLE run_shards (
    run_id       BIGINT      NOT NULL,
    shard_index  INTEGER     NOT NULL,
    state        VARCHAR(16) NOT NULL,
    staged       INTEGER     NOT NULL DEFAULT 0,
    keys_total   BIGINT,
    duplicates   BIGINT      NOT NULL DEFAULT 0,
    auth_calls   BIGINT      NOT NULL DEFAULT 0,
    lookups      BIGINT      NOT NULL DEFAULT 0,
    started_at   VARCHAR(40) NOT NULL,
    finished_at  VARCHAR(40),
    PRIMARY KEY (run_id, shard_index)
);

CREATE TABLE run_keys (
    run_id       BIGINT       NOT NULL,
    shard_index  INTEGER      NOT NULL,
    seq          BIGINT       NOT NULL,
    payer_id     VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    customer_ref VARCHAR(255),
    PRIMARY KEY (run_id, payer_id)
);
CREATE INDEX run_keys_by_seq ON run_keys (run_id, shard_index, seq);

CREATE TABLE billing_key_checks (
    run_id            BIGINT       NOT NULL,
    payer_id          VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    customer_ref      VARCHAR(255),
    status            VARCHAR(16)  NOT NULL,
    pay_type          VARCHAR(16),
    card_code         VARCHAR(32),
    card_name         VARCHAR(100),
    card_mask         VARCHAR(64),
    bank_code         VARCHAR(32),
    bank_name         VARCHAR(100),
    bank_mask         VARCHAR(64),
    bank_account_type VARCHAR(32),
    payer_name        VARCHAR(100),
    payer_phone_mask  VARCHAR(32),
    is_tax            VARCHAR(8),
    result_code       VARCHAR(64),
    result_msg        TEXT,
    attempts          INTEGER      NOT NULL,
    checked_at        VARCHAR(40)  NOT NULL,
    PRIMARY KEY (run_id, payer_id)
);
CREATE INDEX billing_key_checks_by_payer ON billing_key_checks (payer_id, run_id);

-- Each key's newest result across runs (rejected input rows are not keys).
CREATE VIEW billing_key_latest AS
SELECT c.*
FROM billing_key_checks c
WHERE c.status <> 'rejected'
  AND c.run_id = (SELECT MAX(c2.run_id) FROM billing_key_checks c2
                  WHERE c2.payer_id = c.payer_id AND c2.status <> 'rejected');

CREATE TABLE run_leases (
    name         VARCHAR(100) PRIMARY KEY,
    run_id       BIGINT       NOT NULL,
    holder       VARCHAR(200) NOT NULL,
    heartbeat_at VARCHAR(40)  NOT NULL,
    expires_at   VARCHAR(40)  NOT NULL
);
