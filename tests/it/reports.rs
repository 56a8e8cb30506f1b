//! Finance reports, run-to-run changes, summaries and metrics.
