//! The deployment samples under `samples/`: the Kubernetes manifests and the Dockerfile
//! parsed and checked (they cannot run here), and the crontab line run as cron would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use clap::Parser;
use payple_reconcile::simulator::{self, SimHandle};
use payple_reconcile::store::Store;
use serde_json::Value;

use crate::helpers::{self, Scenario, assert_exit, only_run, output_of, summary_of};

fn sample(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(path)
}

pub(super) fn read_sample(path: &str) -> String {
    std::fs::read_to_string(sample(path)).unwrap_or_else(|e| panic!("samples/{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&read_sample(path))
        .unwrap_or_else(|e| panic!("samples/{path} is not valid YAML: {e}"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer}"))
}

fn int_at(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no integer at {pointer}"))
}

/// The rules of a podFailurePolicy: FailJob on exit code 3, never on 4 (Payple
/// unavailable: resumable), and Ignore on DisruptionTarget.
fn assert_pod_failure_policy(policy: &Value, container: &str) {
    let rules = policy["rules"].as_array().expect("podFailurePolicy.rules");
    let fails_on_3 = rules.iter().any(|r| {
        r["action"] == "FailJob"
            && r["onExitCodes"]["operator"] == "In"
            && r["onExitCodes"]["values"]
                .as_array()
                .is_some_and(|v| v.contains(&Value::from(3)))
            && r["onExitCodes"]["containerName"]
                .as_str()
                .is_none_or(|c| c == container)
    });
    assert!(fails_on_3, "no FailJob rule on exit code 3: {policy}");
    let fails_on_4 = rules.iter().any(|r| {
        (r["action"] == "FailJob" || r["action"] == "FailIndex")
            && r["onExitCodes"]["values"]
                .as_array()
                .is_some_and(|v| v.contains(&Value::from(4)))
    });
    assert!(
        !fails_on_4,
        "exit code 4 is resumable, not a failure: {policy}"
    );
    let ignores_disruption = rules.iter().any(|r| {
        r["action"] == "Ignore"
            && r["onPodConditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "DisruptionTarget" && c["status"] == "True")
            })
    });
    assert!(
        ignores_disruption,
        "no Ignore rule on DisruptionTarget: {policy}"
    );
    for r in rules {
        let action = r["action"].as_str().expect("action");
        assert!(
            ["FailJob", "FailIndex", "Ignore", "Count"].contains(&action),
            "{r}"
        );
        assert!(
            r.get("onExitCodes").is_some() != r.get("onPodConditions").is_some(),
            "a rule has exactly one of onExitCodes and onPodConditions: {r}"
        );
    }
}

/// What a manifest's pod template says about credentials, checked against the Secret.
fn assert_pod_credentials(pod: &Value, secret: &Value, args: &[String]) {
    let secret_name = str_at(secret, "/metadata/name");
    let secret_keys: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .expect("stringData")
        .keys()
        .map(String::as_str)
        .collect();
    let container = &pod["containers"][0];
    let env = container["env"].as_array().expect("env");
    let var = |name: &str| env.iter().find(|e| e["name"] == name);
    for name in [
        "PAYPLE_CST_ID",
        "PAYPLE_CUST_KEY",
        "DATABASE_URL",
        "SOURCE_DATABASE_URL",
    ] {
        if let Some(e) = var(name) {
            assert!(e.get("value").is_none(), "{name} must not be inline: {e}");
        }
    }
    // The Pushgateway URL is a secret too (--metrics-push): a pod's metrics must be pushed.
    for name in ["PAYPLE_CST_ID", "DATABASE_URL", "PAYPLE_METRICS_PUSH_URL"] {
        let e = var(name).unwrap_or_else(|| panic!("no {name}"));
        let r = &e["valueFrom"]["secretKeyRef"];
        assert_eq!(r["name"], secret_name, "{name}");
        let key = r["key"].as_str().expect("secretKeyRef.key");
        assert!(
            secret_keys.contains(key),
            "{name}: key {key} not in the Secret"
        );
    }
    let run_key = var("PAYPLE_RUN_KEY").expect("PAYPLE_RUN_KEY (--run-key)");
    assert_eq!(
        run_key["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['batch.kubernetes.io/job-name']"
    );
    // custKey: from the Secret, as an env var or as a mounted file for --cust-key-file.
    match var("PAYPLE_CUST_KEY") {
        Some(e) => assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], secret_name),
        None => {
            let i = args
                .iter()
                .position(|a| a == "--cust-key-file")
                .expect("PAYPLE_CUST_KEY or --cust-key-file");
            let file = Path::new(&args[i + 1]);
            let mount = container["volumeMounts"]
                .as_array()
                .expect("volumeMounts")
                .iter()
                .find(|m| file.starts_with(m["mountPath"].as_str().unwrap_or("//")))
                .unwrap_or_else(|| panic!("{} is on no volume", file.display()));
            assert_eq!(mount["readOnly"], true);
            let volume = pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("the mounted volume");
            assert_eq!(volume["secret"]["secretName"], secret_name, "{volume}");
            let inside = file
                .strip_prefix(mount["mountPath"].as_str().expect("mountPath"))
                .expect("under the mount");
            let item = volume["secret"]["items"]
                .as_array()
                .expect("items")
                .iter()
                .find(|it| it["path"] == inside.to_str().expect("utf-8"))
                .unwrap_or_else(|| panic!("no Secret item for {}", inside.display()));
            let key = item["key"].as_str().expect("key");
            assert!(secret_keys.contains(key), "key {key} not in the Secret");
        }
    }
    for e in env {
        if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            let key = r["key"].as_str().expect("key");
            assert_eq!(r["name"], secret_name, "{e}");
            assert!(
                secret_keys.contains(key),
                "{e}: key {key} not in the Secret"
            );
        }
    }
    assert_eq!(
        pod["restartPolicy"], "Never",
        "podFailurePolicy needs Never"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
}

/// Parses the container's arguments with the binary's own parser (plus the run key the
/// manifest supplies through PAYPLE_RUN_KEY) and validates them into run settings.
fn run_settings_of(
    args: &[String],
    job_completion_index: Option<u32>,
) -> payple_reconcile::settings::BatchSettings {
    let mut argv = vec!["payple-reconcile".to_owned()];
    argv.extend(args.iter().cloned());
    argv.extend([
        "--run-key".to_owned(),
        "payple-reconcile-29405190".to_owned(),
    ]);
    let cli = payple_reconcile::cli::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("the manifest's args do not parse: {e}\n{argv:?}"));
    let payple_reconcile::cli::Command::Run(run) = cli.command else {
        panic!("not a `run`: {argv:?}");
    };
    let env = move |name: &str| match name {
        "JOB_COMPLETION_INDEX" => job_completion_index.map(|i| i.to_string()),
        _ => None,
    };
    payple_reconcile::settings::batch_settings(&run, &env)
        .unwrap_or_else(|e| panic!("the manifest's args are refused: {e}\n{argv:?}"))
}

fn container_args(pod: &Value) -> Vec<String> {
    let container = &pod["containers"][0];
    assert!(
        container.get("command").is_none(),
        "the image's ENTRYPOINT is the binary; args only"
    );
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_owned())
        .collect()
}

#[test]
fn kubernetes_samples_parse_and_have_the_required_fields() {
    let secret = yaml("k8s/secret.example.yaml");
    assert_eq!(secret["apiVersion"], "v1");
    assert_eq!(secret["kind"], "Secret");
    assert!(
        secret.get("data").is_none(),
        "placeholders go in stringData"
    );
    for (key, value) in secret["stringData"].as_object().expect("stringData") {
        let value = value.as_str().expect("string");
        assert!(
            value.contains("REPLACE_ME"),
            "{key} is not a placeholder: {value}"
        );
    }
    let push = str_at(&secret, "/stringData/metrics-push-url");
    payple_reconcile::pushgateway::PushUrl::parse(push)
        .unwrap_or_else(|e| panic!("metrics-push-url {push:?} is refused: {e}"));

    // The CronJob.
    let cron = yaml("k8s/cronjob.yaml");
    assert_eq!(cron["apiVersion"], "batch/v1");
    assert_eq!(cron["kind"], "CronJob");
    assert_eq!(str_at(&cron, "/spec/concurrencyPolicy"), "Forbid");
    assert_eq!(
        str_at(&cron, "/spec/schedule").split_whitespace().count(),
        5
    );
    assert!(int_at(&cron, "/spec/startingDeadlineSeconds") > 0);
    let job = cron
        .pointer("/spec/jobTemplate/spec")
        .expect("jobTemplate.spec");
    assert!(int_at(job, "/activeDeadlineSeconds") > 0);
    assert_pod_failure_policy(&job["podFailurePolicy"], "reconcile");
    let pod = job.pointer("/template/spec").expect("pod spec");
    assert_eq!(pod["containers"][0]["name"], "reconcile");
    let args = container_args(pod);
    assert_pod_credentials(pod, &secret, &args);
    let settings = run_settings_of(&args, None);
    assert!(settings.shard.is_whole());
    assert!(
        int_at(pod, "/terminationGracePeriodSeconds") > settings.shutdown_grace.as_secs() as i64,
        "the kubelet's SIGKILL must come after --shutdown-grace"
    );
    assert!(args.contains(&"live".to_owned()), "{args:?}");

    // The Indexed Job.
    let indexed = yaml("k8s/indexed-job.yaml");
    assert_eq!(indexed["apiVersion"], "batch/v1");
    assert_eq!(indexed["kind"], "Job");
    let spec = &indexed["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = int_at(spec, "/completions");
    assert!(completions > 1);
    assert!((1..=completions).contains(&int_at(spec, "/parallelism")));
    assert!(int_at(spec, "/backoffLimitPerIndex") >= 1);
    assert!(int_at(spec, "/activeDeadlineSeconds") > 0);
    assert_pod_failure_policy(&spec["podFailurePolicy"], "reconcile");
    let pod = spec.pointer("/template/spec").expect("pod spec");
    let args = container_args(pod);
    let i = args
        .iter()
        .position(|a| a == "--shards")
        .expect("the Indexed Job passes --shards");
    assert_eq!(
        args[i + 1],
        completions.to_string(),
        "--shards = completions"
    );
    assert_pod_credentials(pod, &secret, &args);
    for index in 0..completions as u32 {
        let settings = run_settings_of(&args, Some(index));
        assert_eq!(
            (settings.shard.index, i64::from(settings.shard.count.get())),
            (index, completions)
        );
    }
    assert!(
        int_at(pod, "/terminationGracePeriodSeconds")
            > run_settings_of(&args, Some(0)).shutdown_grace.as_secs() as i64
    );
}

#[test]
fn dockerfile_is_multi_stage_and_runs_unprivileged() {
    let text = read_sample("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:1.95-slim") && froms[0].ends_with(" AS builder"),
        "{}",
        froms[0]
    );
    assert_eq!(froms[1], "FROM debian:bookworm-slim");
    // The builder's Debian matches the runtime's, or the binary may need a newer glibc.
    assert!(froms[0].contains("bookworm"), "{}", froms[0]);
    assert!(text.contains("cargo build --profile dist --locked"));
    assert!(text.contains("target/dist/payple-reconcile"));
    assert!(text.contains("ca-certificates"));
    assert!(text.contains("COPY --from=builder"));
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "runs as {user}"
    );
    let entrypoint = lines
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).expect("exec form");
    assert_eq!(entrypoint, ["/usr/local/bin/payple-reconcile"]);
    let ignore = read_sample("Dockerfile.dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

/// The crontab's job line.
struct CronLine {
    schedule: Vec<String>,
    user: String,
    command: String,
}

fn cron_line(text: &str) -> CronLine {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| {
            // Environment lines: NAME=value.
            let first = l.split_whitespace().next().unwrap_or_default();
            !first.contains('=')
        })
        .collect();
    assert_eq!(lines.len(), 1, "one job line: {lines:?}");
    let line = lines[0];
    let mut rest = line;
    let mut fields = Vec::new();
    for _ in 0..6 {
        let rest_trimmed = rest.trim_start();
        let end = rest_trimmed
            .find(char::is_whitespace)
            .expect("six fields before the command");
        fields.push(rest_trimmed[..end].to_owned());
        rest = &rest_trimmed[end..];
    }
    let user = fields.pop().expect("user");
    CronLine {
        schedule: fields,
        user,
        command: rest.trim().to_owned(),
    }
}

/// The crontab's environment and job line: a schedule, an unprivileged user, `%` escaped,
/// the environment from a root-owned file, the date as the run key, the report and metrics
/// paths, no secret inline. Returns the line's command.
fn checked_cron_command(text: &str) -> String {
    let env_lines: Vec<&str> = text
        .lines()
        // NAME=value lines (no spaces): the environment cron gives the command.
        .filter(|l| !l.starts_with('#') && l.contains('=') && !l.contains(' '))
        .collect();
    assert!(env_lines.contains(&"SHELL=/bin/sh"), "{env_lines:?}");
    assert!(
        env_lines.iter().any(|l| l.starts_with("PATH=")),
        "{env_lines:?}"
    );
    let line = cron_line(text);
    assert_eq!(line.schedule.len(), 5);
    for field in &line.schedule {
        assert!(
            field
                .chars()
                .all(|c| c.is_ascii_digit() || "*/,-".contains(c)),
            "schedule field {field:?}"
        );
    }
    assert_eq!(
        line.user, "payple",
        "a system crontab line runs as an unprivileged user"
    );
    let cmd = &line.command;
    for (i, c) in cmd.char_indices() {
        if c == '%' {
            assert!(
                cmd[..i].ends_with('\\'),
                "unescaped % at {i}: cron makes it a newline"
            );
        }
    }
    for needed in [
        ". /etc/payple-reconcile/env",
        "payple-reconcile",
        " run ",
        "--run-key",
        "--report",
        "/var/lib/payple-reconcile/reports/",
        "--metrics-file",
        "date +\\%F",
    ] {
        assert!(
            cmd.contains(needed),
            "the cron line lacks {needed:?}: {cmd}"
        );
    }
    for secret in [
        "PAYPLE_CUST_KEY",
        "PAYPLE_CST_ID",
        "DATABASE_URL",
        "postgres://",
    ] {
        assert!(!cmd.contains(secret), "{secret} inline in the cron line");
    }

    cmd.clone()
}

/// The environment file the line sources: placeholders for every secret. Returns its text.
pub(super) fn checked_env_example() -> String {
    let example = read_sample("payple-reconcile.env.example");
    let vars: BTreeMap<&str, &str> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .filter_map(|l| l.split_once('='))
        .collect();
    for name in [
        "PAYPLE_CST_ID",
        "PAYPLE_CUST_KEY",
        "PAYPLE_REFERER",
        "PAYPLE_URL",
        "DATABASE_URL",
        "SOURCE_DATABASE_URL",
    ] {
        assert!(vars.contains_key(name), "the env example lacks {name}");
    }
    for name in [
        "PAYPLE_CST_ID",
        "PAYPLE_CUST_KEY",
        "DATABASE_URL",
        "SOURCE_DATABASE_URL",
    ] {
        assert!(
            vars[name].contains("REPLACE_ME"),
            "{name} is not a placeholder"
        );
    }

    example
}

/// A SQLite source database with `ids` in `billing_keys`; returns its URL.
pub(super) async fn billing_keys_source(root: &Path, ids: &[String]) -> String {
    let source_url = format!("sqlite://{}?mode=rwc", root.join("billing.db").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&source_url)
        .await
        .expect("source db");
    sqlx::query("CREATE TABLE billing_keys (payer_id TEXT, customer_ref TEXT)")
        .execute(&pool)
        .await
        .expect("create billing_keys");
    for (i, id) in ids.iter().enumerate() {
        sqlx::query("INSERT INTO billing_keys VALUES (?, ?)")
            .bind(id.clone())
            .bind(format!("C-{i}"))
            .execute(&pool)
            .await
            .expect("insert");
    }
    pool.close().await;
    source_url
}

/// The example env file with test values for the simulator and the two databases.
pub(super) fn test_env_file(
    example: &str,
    sim: &SimHandle,
    results_url: &str,
    source_url: &str,
) -> String {
    let test_values = BTreeMap::from([
        ("PAYPLE_CST_ID", simulator::TEST_CST_ID.to_owned()),
        ("PAYPLE_CUST_KEY", simulator::TEST_CUST_KEY.to_owned()),
        ("PAYPLE_REFERER", simulator::TEST_REFERER.to_owned()),
        ("PAYPLE_URL", sim.url()),
        ("DATABASE_URL", format!("'{results_url}'")),
        ("SOURCE_DATABASE_URL", format!("'{source_url}'")),
    ]);
    let env_file: String = example
        .lines()
        .map(|l| match l.split_once('=') {
            Some((name, _)) if test_values.contains_key(name) => {
                format!("{name}={}\n", test_values[name])
            }
            _ => format!("{l}\n"),
        })
        .collect();
    env_file
}

/// The cron line's command as cron runs it (`\%` unescaped), its paths moved under `root`.
fn cron_script(cmd: &str, root: &Path, env_path: &Path) -> String {
    let moves = [
        ("/etc/payple-reconcile/env", env_path.to_path_buf()),
        (
            "/usr/local/bin/payple-reconcile",
            PathBuf::from(helpers::BIN),
        ),
        ("/var/lib/payple-reconcile/reports", root.join("reports")),
        (
            "/var/lib/node_exporter/textfile_collector",
            root.join("textfile"),
        ),
        ("/var/log/payple-reconcile", root.join("log")),
    ];
    // What cron does with the line: `\%` becomes `%`; the rest goes to $SHELL -c.
    let mut script = cmd.replace("\\%", "%");
    for (from, to) in &moves {
        assert!(script.contains(from), "the cron line no longer uses {from}");
        script = script.replace(from, to.to_str().expect("utf-8 path"));
    }
    script
}

/// `/bin/sh -c SCRIPT` with cron's bare environment.
fn cron(script: &str) -> std::process::Command {
    let mut c = std::process::Command::new("/bin/sh");
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .args(["-c", script])
        .stdin(Stdio::null());
    c
}

/// What the cron run left under `root`: one dated report with a BOM, a JSON log, the
/// metrics file, and a run whose key is the date.
async fn assert_cron_outputs(root: &Path, results_url: &str) {
    let reports: Vec<String> = std::fs::read_dir(root.join("reports"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let day = reports[0].strip_suffix(".csv").expect("a .csv report");
    assert!(
        chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok(),
        "{day}"
    );
    let report = std::fs::read(root.join("reports").join(&reports[0])).expect("report");
    assert!(report.starts_with(b"\xEF\xBB\xBF"), "--excel: a UTF-8 BOM");
    assert!(
        String::from_utf8_lossy(&report).lines().count() > 15,
        "a header and a line per key"
    );
    let log = std::fs::read_to_string(root.join("log").join(format!("{day}.log"))).expect("log");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
    assert!(root.join("textfile").join("payple_reconcile.prom").exists());
    let store = Store::open(results_url).await.expect("results");
    let run = only_run(&store).await;
    assert_eq!(run.run_key.as_deref(), Some(day), "the run key is the date");
    store.close().await;
}

/// The crontab line: a schedule, the environment from a root-owned file, the date as the
/// run key, the report and metrics paths; then the line itself is run the way cron runs
/// it (`%` unescaped, `/bin/sh -c`), with its paths moved into a temporary folder, against
/// the simulator; the second start of the day exits 0, already completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crontab_sample_runs_as_cron_would() {
    let text = read_sample("crontab");
    let cmd = checked_cron_command(&text);
    let example = checked_env_example();

    // Run it: the example env file with test values, the keys in a SQLite billing_keys table.
    // Unopened: the cron line's run makes the results database.
    let world = Scenario::new().start_unopened().await;
    let (root, sim, results_url) = (world.dir.path(), &world.sim, &world.db.url);
    for sub in ["reports", "log", "textfile"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    let ids = helpers::payer_ids(15, "crontab");
    let source_url = billing_keys_source(root, &ids).await;
    let env_path = root.join("env");
    let env_file = test_env_file(&example, sim, results_url, &source_url);
    std::fs::write(&env_path, env_file).expect("write env");
    let script = cron_script(&cmd, root, &env_path);

    let out = output_of(cron(&script)).await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["state"], "completed", "{summary}");
    assert_eq!(summary["checked_now"], 15, "{summary}");
    assert_eq!(sim.stats().lookups, 15);
    assert_cron_outputs(root, results_url).await;

    // Started again the same day (by hand, or a second cron daemon): already completed.
    let out = output_of(cron(&script)).await;
    assert_exit(&out, 0);
    let again = summary_of(&out);
    assert!(
        again["note"]
            .as_str()
            .is_some_and(|n| n.contains("already completed")),
        "{again}"
    );
    assert_eq!(sim.stats().lookups, 15, "the second start sent lookups");
    world.close().await;
}
