-- A re-check of failed keys (`run --recheck-failed`, or the same --run-key) deletes their
-- result rows so they are pending again; the lookups already spent on each key are kept
-- here, so the new row's attempts add up.
ALTER TABLE run_keys ADD COLUMN prior_attempts INTEGER NOT NULL DEFAULT 0;
