//! Operations: leases, run keys, dry runs, shards, MySQL, the samples.
