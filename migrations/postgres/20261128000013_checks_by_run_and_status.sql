-- A run's results counted by status (every run's summary, its coverage record) read this
-- index alone: through the (run_id, payer_id) key each row was fetched from a random
-- page of the table, about 5 s at the end of a 1,000,000-key run on SQLite. Entries
-- arrive in run order, so keeping it costs little.
CREATE INDEX billing_key_checks_by_run_status ON billing_key_checks (run_id, status);
