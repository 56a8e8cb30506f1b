//! The nightly batch against the simulator and real databases: rows, sources, limits.
