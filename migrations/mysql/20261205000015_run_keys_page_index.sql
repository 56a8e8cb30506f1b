-- A page of pending keys (run, shard, seq order, with the key, its reference and prior
-- attempts) is read from this index alone. Through run_keys_by_seq each key of a page was
-- fetched from the table by its (run_id, payer_id) primary key: a random page per key.
CREATE INDEX run_keys_page ON run_keys (run_id, shard_index, seq, payer_id, customer_ref, prior_attempts);
DROP INDEX run_keys_by_seq ON run_keys;
