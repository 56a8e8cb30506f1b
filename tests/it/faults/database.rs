//! Database trouble: PostgreSQL connections killed mid-run, and PostgreSQL gone mid-run.

use std::time::{Duration, Instant};

use payple_reconcile::store::RunState;

use super::POLL;
use crate::helpers::{
    self, Scenario, TestDb, assert_exit, assert_ground_truth, output_of, stderr_of, summary_of,
    wait_output,
};

/// PostgreSQL results database; three times mid-run the test kills every connection the
/// job has (`pg_terminate_backend`). The job retries its writes and completes (exit 0, one
/// row per key), or stops with exit 1 leaving a resumable run that `--resume` completes.
/// Either way no result is silently dropped: every key ends with one row and its true
/// status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_run_lose_no_result() {
    let Some(db) = TestDb::postgres().await else {
        eprintln!("skipping the database-trouble scenario: no PostgreSQL server");
        return;
    };
    const KEYS: usize = 400;
    let set = Scenario::new()
        .keys(KEYS, "pg-trouble")
        .on(db)
        .start()
        .await;
    let name = set
        .db
        .url
        .rsplit('/')
        .next()
        .expect("database name")
        .to_owned();
    let killer = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&set.db.url)
        .await
        .expect("connect the killer");
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    );

    let mut child = set.spawn(&["--rate", "100", "--concurrency", "8"]);
    // Once the run is under way, kill every connection of the job every 15 ms for two
    // seconds: idle ones (the pool must notice) and busy ones (a write, a page, a commit
    // must fail and be retried, or stop the run).
    helpers::wait_for_rows(&set.store, 40, Duration::from_secs(20), POLL, &mut child).await;
    let mut killed = 0;
    let mut rounds = 0;
    let storm_started = Instant::now();
    while storm_started.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        killed += sqlx::query(sqlx::AssertSqlSafe(terminate.clone()))
            .fetch_all(&killer)
            .await
            .expect("terminate backends")
            .len();
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let out = wait_output(child, Duration::from_secs(60)).await;
    let code = out.status.code();
    eprintln!(
        "database trouble: killed {killed} backends in {rounds} rounds; the job exited \
         {code:?}\n{}",
        stderr_of(&out)
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(killed > 0, "no connection of the job was killed");
    let run = set.run_record().await;
    match code {
        Some(0) => {
            let summary = summary_of(&out);
            assert_eq!(summary["state"], "completed");
            assert_eq!(run.state, RunState::Completed);
            assert_eq!(
                summary["active"].as_i64().unwrap_or(-1) + summary["gone"].as_i64().unwrap_or(-1),
                KEYS as i64
            );
        }
        Some(1) => {
            assert_ne!(run.state, RunState::Completed, "exit 1 but {run:?}");
            let out = output_of(set.bare_command(&["--resume", "--rate", "0"])).await;
            assert_exit(&out, 0);
            assert_eq!(summary_of(&out)["run_id"], run.id);
        }
        other => panic!("exit {other:?}: {}", stderr_of(&out)),
    }
    let run = set.store.run(run.id).await.expect("read").expect("the run");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(run.keys_total, Some(KEYS as i64));
    assert_ground_truth(&set.store, run.id, &set.ids).await;
    killer.close().await;
    set.close().await;
}

/// PostgreSQL results database that goes away for good mid-run: the test forbids new
/// connections to it (`ALTER DATABASE ... ALLOW_CONNECTIONS false`) and kills the job's.
/// The writer's retries run out, and the job stops with exit 1 (no summary: the end of the
/// run cannot be recorded) leaving the run resumable. Once the database is back, `--resume`
/// completes it: every key one row with its true status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gone_mid_run_stops_with_exit_1_and_resume_completes() {
    let Some(db) = TestDb::postgres().await else {
        eprintln!("skipping the database-outage scenario: no PostgreSQL server");
        return;
    };
    const KEYS: usize = 300;
    let set = Scenario::new().keys(KEYS, "pg-outage").on(db).start().await;
    let (base, name) = set.db.url.rsplit_once('/').expect("database name");
    let name = name.to_owned();
    // From the server's own database: a database cannot lock itself out.
    let admin_url = format!("{base}/postgres");
    let killer = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .expect("connect the killer");
    let exec = |sql: String| {
        let killer = killer.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&killer)
                .await
                .expect("admin statement")
                .len()
        }
    };

    let mut child = set.spawn(&["--rate", "50", "--concurrency", "8"]);
    helpers::wait_for_rows(&set.store, 40, Duration::from_secs(20), POLL, &mut child).await;
    exec(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    let killed = exec(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))
    .await;
    let down = Instant::now();
    let out = wait_output(child, Duration::from_secs(90)).await;
    let stopped_after = down.elapsed();
    exec(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    eprintln!(
        "database outage: killed {killed} backends; the job exited {:?} {stopped_after:?} \
         later\n{}",
        out.status.code(),
        stderr_of(&out)
    );
    assert_exit(&out, 1);
    // An unrecorded end prints no summary, only the JSON error line (issue 10).
    let line = summary_of(&out);
    assert_eq!(line["exit_code"], 1, "{line}");
    assert!(
        line.get("run_id").is_none(),
        "a summary for an unrecorded end: {line}"
    );
    let stderr = stderr_of(&out);
    assert!(stderr.contains("resumable"), "{stderr}");

    let run = set.run_record().await;
    assert_ne!(run.state, RunState::Completed, "{run:?}");
    let written = set.rows().await;
    assert!(written < KEYS as i64, "{written} rows");
    let out = output_of(set.bare_command(&["--resume", "--rate", "0"])).await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["run_id"], run.id);
    assert_eq!(summary["checked_now"], KEYS as i64 - written);
    let run = set.store.run(run.id).await.expect("read").expect("the run");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.exit_code, Some(0));
    assert_ground_truth(&set.store, run.id, &set.ids).await;
    killer.close().await;
    set.close().await;
}
