//! Sharding: three shard processes sharing one run, `--shards` with the Indexed Job's
//! `JOB_COMPLETION_INDEX`, and the validation of both.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use payple_reconcile::domain::stable_hash;
use payple_reconcile::simulator::{Faults, KeyBook, SimHandle};
use payple_reconcile::store::{RunState, Store};
use sqlx::Row;

use super::run_id_of;
use crate::helpers::{
    Scenario, TestDb, all_checks, assert_exit, derived_status, key_hash, logged_lookups, only_run,
    output_of, scalar_i64, stderr_of, summary_of,
};

fn shard_of(id: &str, count: u64) -> u64 {
    stable_hash(id.as_bytes()) % count
}

/// The three shards' summaries: each exited 0, all name one run, and at least the last
/// saw it completed.
fn assert_one_run(outs: &[std::process::Output]) -> i64 {
    let mut summaries = Vec::new();
    for out in outs {
        assert_exit(out, 0);
        summaries.push(summary_of(out));
    }
    let run_id = run_id_of(&summaries[0]);
    for s in &summaries {
        assert_eq!(
            run_id_of(s),
            run_id,
            "the shards must share one run: {summaries:?}"
        );
    }
    let completed = summaries
        .iter()
        .filter(|s| s["state"] == "completed")
        .count();
    assert!(
        completed >= 1,
        "the last shard must see the run completed: {summaries:?}"
    );
    run_id
}

/// The shared run's row, one row per key, and one `run_shards` row per shard with its
/// count of keys (`per_shard`).
async fn assert_shared_run(store: &Store, run_id: i64, ids: &[String], per_shard: &[i64]) {
    let run = only_run(store).await;
    assert_eq!(run.id, run_id);
    assert_eq!(run.state, RunState::Completed, "{run:?}");
    assert_eq!(run.run_key.as_deref(), Some("2026-11-27"));
    assert_eq!(run.shard_count, 3);
    assert_eq!(run.keys_total, Some(60), "{run:?}");
    assert_eq!(run.counts.total(), 60, "{run:?}");
    assert_eq!((run.auth_calls, run.lookups), (3, 60), "{run:?}");
    assert!(run.finished_at.is_some());
    let checks = all_checks(store, run_id).await;
    assert_eq!(checks.len(), 60, "one row per key");
    for id in ids {
        let c = checks.get(id).unwrap_or_else(|| panic!("no row for {id}"));
        assert_eq!(c.status.as_str(), derived_status(id), "{id}");
        assert_eq!(c.attempts, 1, "{id}");
    }
    let shards = sqlx::query(
        "SELECT shard_index, state, keys_total FROM run_shards WHERE run_id = $1 \
         ORDER BY shard_index",
    )
    .bind(run_id)
    .fetch_all(store.pool())
    .await
    .expect("read run_shards");
    let shards: Vec<(i64, String, i64)> = shards
        .iter()
        .map(|r| {
            (
                i64::from(r.try_get::<i32, _>(0).expect("index")),
                r.try_get(1).expect("state"),
                r.try_get(2).expect("keys_total"),
            )
        })
        .collect();
    assert_eq!(
        shards,
        (0..3)
            .map(|i| (i, "completed".to_owned(), per_shard[i as usize]))
            .collect::<Vec<_>>()
    );
}

/// Pace: each shard at --rate / 3 = 10 per second (one permit may be ready at start).
fn assert_shard_pace(sims: &[SimHandle], per_shard: &[i64]) {
    for (i, sim) in sims.iter().enumerate() {
        let mut times = sim.lookup_times();
        times.sort();
        let n = times.len();
        assert_eq!(n as i64, per_shard[i], "shard {i} lookups");
        if n >= 4 {
            let span = times[n - 1] - times[0];
            let floor = Duration::from_millis(85) * (n as u32 - 2);
            assert!(
                span >= floor,
                "shard {i}: {n} lookups in {span:?}: paced at more than 30/3 per second"
            );
            assert!(
                span <= Duration::from_millis(100) * n as u32 + Duration::from_secs(2),
                "shard {i}: {n} lookups took {span:?}"
            );
        }
    }
}

/// Every key exactly once, each by its own shard (the simulators' request logs, complete
/// once they have stopped).
async fn assert_each_key_by_its_shard(sims: Vec<SimHandle>, logs: &[PathBuf], ids: &[String]) {
    let mut seen = Vec::new();
    for (i, sim) in sims.into_iter().enumerate() {
        sim.shutdown().await;
        for hash in logged_lookups(&logs[i]) {
            let owner = ids
                .iter()
                .find(|id| key_hash(id) == hash)
                .unwrap_or_else(|| panic!("shard {i} looked up an unknown key {hash}"));
            assert_eq!(shard_of(owner, 3), i as u64, "shard {i} looked up {owner}");
            seen.push(hash);
        }
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 60, "lookups in all");
    assert_eq!(distinct.len(), 60, "every key once");
}

/// Three shard processes, started together against one PostgreSQL database with one run
/// key, each talking to a simulator of its own: every key is looked up once, by the shard
/// its hash names; the run is `completed` once the last shard is; `--rate 30` over three
/// shards paces each at 10 per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_cover_every_key_once_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    // Unopened: the shards meet a database no process has migrated yet.
    let world = Scenario::new()
        .on(db)
        .keys(60, "shards")
        .request_log()
        .args(&[
            "--run-key",
            "2026-11-27",
            "--rate",
            "30",
            "--concurrency",
            "4",
        ])
        .start_unopened()
        .await;
    // Shard 0 on the scenario's simulator, shards 1 and 2 on simulators of their own.
    let mut sims = Vec::new();
    let mut logs = vec![world.log.clone().expect("the scenario's request log")];
    for i in 1..3 {
        let log = world.dir.path().join(format!("shard-{i}.jsonl"));
        sims.push(
            world
                .second_sim(KeyBook::derived(), Faults::none(), Some(log.clone()))
                .await,
        );
        logs.push(log);
    }
    let cmd = |i: usize| {
        let shard = format!("{i}/3");
        let sim = if i == 0 { &world.sim } else { &sims[i - 1] };
        output_of(world.command_with_sim(sim, &["--shard", &shard]))
    };
    // Launched together, on a database no process has migrated yet.
    let (a, b, c) = tokio::join!(cmd(0), cmd(1), cmd(2));
    let outs = [a, b, c];
    let run_id = assert_one_run(&outs);
    let store = world.db.store().await;
    let ids = &world.ids;
    let per_shard: Vec<i64> = (0..3u64)
        .map(|i| ids.iter().filter(|id| shard_of(id, 3) == i).count() as i64)
        .collect();
    assert_shared_run(&store, run_id, ids, &per_shard).await;
    sims.insert(0, world.sim);
    assert_shard_pace(&sims, &per_shard);
    assert_each_key_by_its_shard(sims, &logs, &world.ids).await;
    store.close().await;
}

/// `--shards 3` in a pod with JOB_COMPLETION_INDEX=1 is `--shard 1/3`; a shard needs a run
/// key; `--shards` needs the index; an index must be below the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_from_job_completion_index_and_their_validation() {
    // Unopened: the refusals below meet a fresh database, as the shards do theirs.
    let world = Scenario::new().keys(30, "job-index").start_unopened().await;
    let ids = &world.ids;
    let want: BTreeSet<String> = ids
        .iter()
        .filter(|id| shard_of(id, 3) == 1)
        .cloned()
        .collect();
    assert!(!want.is_empty() && want.len() < 30);

    let mut results = Vec::new();
    for (flags, index) in [
        (&["--shards", "3"][..], Some("1")),
        (&["--shard", "1/3"][..], None),
    ] {
        let db = TestDb::sqlite();
        let mut cmd = world.command_on(
            &db,
            &[flags, &["--run-key", "night", "--rate", "0"]].concat(),
        );
        if let Some(index) = index {
            cmd.env("JOB_COMPLETION_INDEX", index);
        }
        let out = output_of(cmd).await;
        assert_exit(&out, 0);
        let summary = summary_of(&out);
        assert_eq!(summary["state"], "running", "one shard of three: {summary}");
        assert_eq!(summary["checked_now"].as_u64(), Some(want.len() as u64));
        let store = db.store().await;
        let run = only_run(&store).await;
        assert_eq!(run.shard_count, 3);
        let got: BTreeSet<String> = all_checks(&store, run.id).await.into_keys().collect();
        let shards = scalar_i64(
            &store,
            "SELECT COUNT(*) FROM run_shards WHERE shard_index = 1",
        )
        .await;
        let others = scalar_i64(
            &store,
            "SELECT COUNT(*) FROM run_shards WHERE shard_index <> 1",
        )
        .await;
        assert_eq!((shards, others), (1, 0), "{flags:?}");
        results.push(got);
        store.close().await;
    }
    assert_eq!(results[0], want, "--shards 3 with JOB_COMPLETION_INDEX=1");
    assert_eq!(results[1], want, "--shard 1/3");

    let lookups = world.sim.stats().lookups;
    let refused: [(&[&str], Option<&str>, &str); 4] = [
        (&["--shard", "1/3"], None, "--run-key"),
        (
            &["--shards", "3", "--run-key", "x"],
            None,
            "JOB_COMPLETION_INDEX",
        ),
        (
            &["--shards", "3", "--run-key", "x"],
            Some("3"),
            "below the count",
        ),
        (
            &["--shard", "3/3", "--run-key", "x"],
            None,
            "below the count",
        ),
    ];
    for (flags, index, says) in refused {
        let mut cmd = world.command(flags);
        if let Some(index) = index {
            cmd.env("JOB_COMPLETION_INDEX", index);
        }
        let out = output_of(cmd).await;
        assert_exit(&out, 3);
        assert!(
            stderr_of(&out).contains(says),
            "{flags:?}: {}",
            stderr_of(&out)
        );
    }
    assert_eq!(
        world.sim.stats().lookups,
        lookups,
        "a refused shard sent lookups"
    );
    world.close().await;
}
