//! The documentation keeps its promises: every shell block in README.md and docs/*.md runs
//! as shown against the simulator, and every relative link (and #anchor) resolves.
//!
//! A shell block (```` ```sh ````) is either run or carries, as its first line, the visible
//! marker `# not run by the docs test: WHY`. A block that is run holds only commands that
//! start with `payple-reconcile` or `cargo run … --` (run as the test binary) and `#`
//! comments; anything else fails the test, naming file and line. A command must exit 0
//! unless its comment says `(exit N)`. Each page's blocks run in order in a folder of their
//! own, which holds `keys.csv` (the first 20 keys of `samples/payer_ids.csv`), `samples/`
//! (the repository's), and `payple-reconcile.db` with a `billing_keys` table (`payer_id`,
//! `customer_ref`, `next_charge_on`) of the same keys; `PAYPLE_URL` names the test's simulator and the
//! test partner's credentials are exported.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use payple_reconcile::simulator;

use crate::helpers::{BIN, Scenario, wait_output};

/// The first line of a shell block the test does not run, followed by the reason.
const NOT_RUN: &str = "# not run by the docs test:";

/// Keys in each page's `keys.csv` and `billing_keys`: 2 s at the default pace.
const KEYS: usize = 20;

/// `keys.csv`: the header and the first [`KEYS`] rows of `samples/payer_ids.csv`.
fn keys_csv() -> String {
    let sample = std::fs::read_to_string(root().join("samples/payer_ids.csv"))
        .expect("read samples/payer_ids.csv");
    let mut text: String = sample.lines().take(KEYS + 1).collect::<Vec<_>>().join("\n");
    text.push('\n');
    text
}

/// Longest a documented command may take (the quick start's 200 keys take ~20 s).
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, then docs/*.md in name order.
fn pages() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    let mut pages = vec![root().join("README.md")];
    pages.extend(docs);
    pages
}

fn relative(page: &Path) -> String {
    page.strip_prefix(root())
        .unwrap_or(page)
        .display()
        .to_string()
}

/// One command of a shell block, as the test runs it.
#[derive(Debug, PartialEq)]
struct DocCommand {
    /// Where it is: `FILE:LINE`.
    at: String,
    /// The command line given to `sh -c` (`cargo run … --` replaced by the binary).
    shell: String,
    /// The exit code it must end with.
    exit: i32,
}

/// What a page's shell blocks ask for.
#[derive(Debug, Default, PartialEq)]
struct PageCommands {
    run: Vec<DocCommand>,
    /// `FILE:LINE` and reason of each block marked [`NOT_RUN`].
    not_run: Vec<(String, String)>,
}

/// The fenced blocks of a Markdown text: (line of the opening fence, info string, lines).
fn fenced_blocks(text: &str) -> Vec<(usize, String, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, Vec<String>)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match (&mut open, fence) {
            (None, true) => {
                let info = line.trim_start().trim_start_matches('`').trim().to_owned();
                open = Some((i + 1, info, Vec::new()));
            }
            (Some(_), true) => blocks.extend(open.take()),
            (Some((_, _, lines)), false) => lines.push(line.to_owned()),
            (None, false) => {}
        }
    }
    blocks
}

/// The shell blocks of one page, classified; an error names a block the test cannot treat.
fn page_commands(file: &str, text: &str) -> Result<PageCommands, String> {
    let mut page = PageCommands::default();
    for (fence_line, info, lines) in fenced_blocks(text) {
        if !matches!(info.as_str(), "sh" | "bash" | "shell" | "console") {
            continue;
        }
        let first = fence_line + 1;
        let at = format!("{file}:{first}");
        if info != "sh" {
            return Err(format!("{at}: a `{info}` block; shell blocks are ```sh"));
        }
        if let Some(reason) = lines.first().and_then(|l| l.trim().strip_prefix(NOT_RUN)) {
            if reason.trim().is_empty() {
                return Err(format!("{at}: `{NOT_RUN}` needs a reason"));
            }
            page.not_run.push((at, reason.trim().to_owned()));
            continue;
        }
        let before = page.run.len();
        for (line_no, line) in logical_lines(&lines) {
            let at = format!("{file}:{}", first + line_no);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            page.run.push(doc_command(&at, line)?);
        }
        if page.run.len() == before {
            return Err(format!(
                "{at}: a shell block with no command; mark it `{NOT_RUN} WHY` or drop it"
            ));
        }
    }
    Ok(page)
}

/// Lines with their `\` continuations joined, each with its index in the block.
fn logical_lines(lines: &[String]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in lines.iter().enumerate() {
        let (start, mut text) = pending.take().unwrap_or((i, String::new()));
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                text.push(' ');
                pending = Some((start, text));
            }
            None => {
                text.push_str(line);
                out.push((start, text));
            }
        }
    }
    out.extend(pending);
    out
}

/// One documented command line: what to run and the exit code it must give.
fn doc_command(at: &str, line: &str) -> Result<DocCommand, String> {
    let (command, comment) = match line.find(" # ") {
        Some(i) => (line[..i].trim_end(), &line[i + 3..]),
        None => (line, ""),
    };
    let shell = if command.starts_with("payple-reconcile ") || command == "payple-reconcile" {
        command.to_owned()
    } else if let Some(rest) = command.strip_prefix("cargo run ") {
        let (_, args) = rest
            .split_once("-- ")
            .ok_or_else(|| format!("{at}: `cargo run` without `-- ARGS`: {line}"))?;
        format!("payple-reconcile {args}")
    } else {
        return Err(format!(
            "{at}: the docs test does not know how to run `{line}`: start it with \
             `payple-reconcile` or `cargo run`, or mark the block `{NOT_RUN} WHY`"
        ));
    };
    let exit = match comment.split_once("(exit ") {
        Some((_, rest)) => rest
            .split(')')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("{at}: unreadable `(exit N)` in `{comment}`"))?,
        None => 0,
    };
    Ok(DocCommand {
        at: at.to_owned(),
        shell,
        exit,
    })
}

/// Links `samples/` into a page's folder and writes `billing_keys` (the rows of `csv`) into
/// its default results database.
async fn seed(dir: &Path, csv: &str) {
    std::os::unix::fs::symlink(root().join("samples"), dir.join("samples")).expect("link samples/");
    use sqlx::Connection;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.join("payple-reconcile.db").display()
    );
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("create payple-reconcile.db");
    sqlx::query(
        "CREATE TABLE billing_keys (payer_id TEXT NOT NULL, customer_ref TEXT, \
         next_charge_on TEXT)",
    )
    .execute(&mut conn)
    .await
    .expect("create billing_keys");
    for (i, row) in csv.lines().skip(1).enumerate() {
        let mut cells = row.split(',');
        sqlx::query(
            "INSERT INTO billing_keys VALUES (?, ?, date('now', '+' || (? % 30) || ' days'))",
        )
        .bind(cells.next().expect("a payer_id"))
        .bind(cells.next())
        .bind(i as i64)
        .execute(&mut conn)
        .await
        .expect("insert a billing key");
    }
    conn.close().await.expect("close payple-reconcile.db");
    // Private, as the job itself creates its results files: it refuses a readable one.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("payple-reconcile.db"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod 600 payple-reconcile.db");
}

/// `sh -c LINE` in `dir`, with the binary first on PATH and Payple at `payple_url`.
fn shell(dir: &Path, payple_url: &str, line: &str) -> Command {
    let bin_dir = Path::new(BIN).parent().expect("the binary's folder");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(line)
        .current_dir(dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("TMPDIR", dir)
        .env("PAYPLE_URL", payple_url)
        .env("PAYPLE_CST_ID", simulator::TEST_CST_ID)
        .env("PAYPLE_CUST_KEY", simulator::TEST_CUST_KEY)
        .env("PAYPLE_REFERER", simulator::TEST_REFERER)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let start = text.len().saturating_sub(2_000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    text[start..].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_command_runs_as_shown() {
    let mut ran = 0;
    let mut not_run = Vec::new();
    for page in pages() {
        let file = relative(&page);
        let text = std::fs::read_to_string(&page).expect("read the page");
        let commands = page_commands(&file, &text).unwrap_or_else(|e| panic!("{e}"));
        not_run.extend(commands.not_run);
        if commands.run.is_empty() {
            continue;
        }
        let csv = keys_csv();
        let setup = Scenario::new()
            .csv_file("keys.csv", csv.as_bytes())
            .start()
            .await;
        let dir = setup.dir.path();
        seed(dir, &csv).await;
        for command in &commands.run {
            eprintln!("docs: {}: {}", command.at, command.shell);
            let mut child =
                tokio::process::Command::from(shell(dir, &setup.sim.url(), &command.shell));
            child.kill_on_drop(true);
            let child = child.spawn().expect("sh starts");
            let out: Output = wait_output(child, COMMAND_LIMIT).await;
            assert_eq!(
                out.status.code(),
                Some(command.exit),
                "{}: `{}` ended with {:?}, the docs say exit {}\nstdout: {}\nstderr: {}",
                command.at,
                command.shell,
                out.status,
                command.exit,
                tail(&out.stdout),
                tail(&out.stderr),
            );
            ran += 1;
        }
    }
    assert!(ran >= 10, "only {ran} documented commands found");
    eprintln!("docs: {ran} commands run; not run, as marked:");
    for (at, why) in not_run {
        eprintln!("  {at}: {why}");
    }
}

#[test]
fn a_block_the_test_cannot_run_fails_it() {
    let unknown = "text\n\n```sh\nsqlite3 r.db 'DELETE FROM billing_keys'\n```\n";
    let err = page_commands("X.md", unknown).expect_err("an unknown command is refused");
    assert!(err.contains("X.md:4"), "{err}");
    let unmarked = "```sh\n# only a comment\n```\n";
    assert!(page_commands("X.md", unmarked).is_err());
    let bare_marker = "```sh\n# not run by the docs test:\ncargo test\n```\n";
    assert!(page_commands("X.md", bare_marker).is_err());
    let bash = "```bash\npayple-reconcile summary\n```\n";
    assert!(page_commands("X.md", bash).is_err());
}

#[test]
fn commands_are_read_as_a_reader_would() {
    let page = "```sh\n\
        cargo run --release -- run --simulator --csv samples/payer_ids.csv\n\
        payple-reconcile run --resume   # nothing to resume (exit 3)\n\
        payple-reconcile --log-level warn lookup \\\n  --simulator KEY\n\
        ```\n\n\
        ```sh\n# not run by the docs test: needs the internet\ncurl https://example.com\n```\n\
        ```json\n{}\n```\n";
    let got = page_commands("P.md", page).expect("a readable page");
    let shells: Vec<(&str, i32)> = got.run.iter().map(|c| (c.shell.as_str(), c.exit)).collect();
    assert_eq!(
        shells,
        [
            (
                "payple-reconcile run --simulator --csv samples/payer_ids.csv",
                0
            ),
            ("payple-reconcile run --resume", 3),
            (
                "payple-reconcile --log-level warn lookup    --simulator KEY",
                0
            ),
        ]
    );
    assert_eq!(got.run[2].at, "P.md:4");
    assert_eq!(
        got.not_run,
        [("P.md:9".to_owned(), "needs the internet".to_owned())]
    );
}

// ---- links ---------------------------------------------------------------------------------

/// The targets of `[text](target)` and `![alt](target)` outside code.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Inline code is not a link.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(k, _)| k % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(k) = rest.find("](") {
            let after = &rest[k + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((i + 1, target.to_owned()));
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchors for a page's headings (`## Result codes (`--codes FILE`)` →
/// `result-codes---codes-file`; repeats get `-1`, `-2`, …).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut candidate = slug.clone();
        let mut n = 0;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
        seen.insert(candidate);
    }
    seen
}

/// The dangling relative links of one page, each as `FILE:LINE: TARGET (why)`.
fn dangling_links(page: &Path, text: &str) -> Vec<String> {
    let file = relative(page);
    let mut bad = Vec::new();
    for (line, target) in link_targets(text) {
        if target.is_empty() {
            bad.push(format!("{file}:{line}: an empty link"));
            continue;
        }
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        // The page itself (`#anchor`), or a file beside it.
        let other = if path.is_empty() {
            None
        } else {
            let resolved = page.parent().expect("a page's folder").join(path);
            if !resolved.exists() {
                bad.push(format!("{file}:{line}: {target} (no such file)"));
                continue;
            }
            Some(resolved)
        };
        if let Some(anchor) = anchor {
            let headings = match &other {
                None => anchors(text),
                Some(p) if p.extension().is_some_and(|e| e == "md") => {
                    anchors(&std::fs::read_to_string(p).unwrap_or_default())
                }
                Some(_) => BTreeSet::new(),
            };
            if !headings.contains(anchor) {
                bad.push(format!("{file}:{line}: {target} (no such heading)"));
            }
        }
    }
    bad
}

#[test]
fn every_relative_link_resolves() {
    let mut bad = Vec::new();
    let mut links = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("read the page");
        links += link_targets(&text).len();
        bad.extend(dangling_links(&page, &text));
    }
    assert!(bad.is_empty(), "dangling links:\n{}", bad.join("\n"));
    assert!(links >= 10, "only {links} links found");
}

#[test]
fn a_dangling_link_or_anchor_is_found() {
    let page = root().join("docs/example.md");
    let text = "# Top\n\n## Result codes (`--codes FILE`)\n\n\
        [ok](#result-codes---codes-file) [ok too](../README.md#exit-codes) \
        [gone](missing.md) [no heading](../README.md#no-such-heading) \
        `[not a link](nowhere.md)`\n";
    let bad = dangling_links(&page, text);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].contains("missing.md (no such file)"), "{bad:?}");
    assert!(
        bad[1].contains("#no-such-heading (no such heading)"),
        "{bad:?}"
    );
}
