//! The files `run` writes at its end (`--report`, `--metrics-file`) are checked before
//! any lookup: a missing folder or a folder in their place is a configuration error, and
//! the simulator never sees a lookup.

use crate::helpers::Scenario;

/// Each case: the flag, and where it points inside the scenario's folder.
const CASES: &[(&str, &str)] = &[
    ("--report", "gone/night.csv"),
    ("--report", "."),
    ("--metrics-file", "gone/run.prom"),
    ("--metrics-file", "."),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_cannot_be_written_stops_the_run_before_any_lookup() {
    for (flag, place) in CASES {
        let set = Scenario::new().keys(5, "outputs-checked").start().await;
        let path = set.dir.path().join(place);
        let out = set
            .output(&[flag, path.to_str().expect("utf-8 path")])
            .await;
        let case = format!("{flag} {place}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{case}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{case}: stderr does not name {flag}: {stderr}"
        );
        let stats = set.sim.stats();
        assert_eq!(stats.lookups, 0, "{case}: a lookup was sent");
        assert_eq!(stats.auth_calls, 0, "{case}: Payple was asked for a token");
        assert_eq!(set.rows().await, 0, "{case}: a result row was written");
        set.close().await;
    }
}
