//! README.md's "Using it" examples, run as a reader runs them: the section's fenced `sh` blocks, in
//! order, with bash, against a runner that `scripts/run` started (as the README's "The two
//! commands" says, with `SEATKEEPER_ADMIN_TOKEN=change-me`). Each answer must have the status its
//! `# => ...` line shows and the fields it spells out (`"active":2`, `"code":"seat_limit_reached"`);
//! `...` stands for what differs each run and is not checked.
//!
//! Only two things of the text are changed before it runs: the base URL (the runner listens on a
//! free port, `--listen 127.0.0.1:0`) and the license id `acme`, made unique, because the runner's
//! Redis (127.0.0.1:6379) is shared with other runs and a seat taken there lasts a lease. The
//! ledger is a SQLite file of this run's own.
//!
//! `scripts/run` builds the binary it runs; `SEATKEEPER_RUN_PROFILE` makes that the profile this
//! test was built in (debug under `scripts/test`, which built the workspace already), so no
//! release build is added to the suite.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use seatkeeper_tests::unique;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

/// What the README's runner command sets; the examples' `ADMIN=` says the same.
const ADMIN: &str = "change-me";
/// Where the README's examples expect the runner.
const README_BASE: &str = "http://127.0.0.1:8004";
/// The examples' lease (the default): a `Retry-After` is at most this.
const LEASE_TTL: u64 = 90;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

/// The fenced `sh` blocks of the README's `## Using it` section that show answers (`# =>`), joined.
/// (The section's admin command-line block lists commands one by one, with no answers, and
/// `seatkeeper sweep --full` in it would sweep the shared Redis: it is not run.)
fn using_it_blocks(readme: &str) -> String {
    let start = readme.find("\n## Using it\n").expect("README.md has a \"## Using it\" section");
    let rest = &readme[start + 1..];
    let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    let mut out = String::new();
    let mut block: Option<String> = None;
    for line in section.lines() {
        match block.as_mut() {
            None if line.trim_end() == "```sh" => block = Some(String::new()),
            None => {}
            Some(b) if line.trim_end() == "```" => {
                if b.lines().any(|l| l.starts_with("# =>")) {
                    out.push_str(b);
                }
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
        }
    }
    assert!(block.is_none(), "an unclosed ```sh block in \"Using it\"");
    out
}

/// One example: the command lines since the last answer, and the answer shown after them.
#[derive(Debug)]
struct Example {
    commands: Vec<String>,
    /// The `# => ...` text, its continuation lines joined; None for lines that show no answer.
    expect: Option<String>,
}

fn split_examples(block: &str) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut commands = Vec::new();
    let mut expect: Option<String> = None;
    for line in block.lines() {
        let continuation = line.starts_with("#  ");
        if let Some(answer) = line.strip_prefix("# =>") {
            assert!(expect.is_none(), "two `# =>` lines for one command: {line}");
            expect = Some(answer.trim().to_owned());
        } else if continuation && expect.is_some() {
            let e = expect.as_mut().unwrap();
            e.push(' ');
            e.push_str(line.trim_start_matches('#').trim());
        } else {
            if let Some(e) = expect.take() {
                examples.push(Example { commands: std::mem::take(&mut commands), expect: Some(e) });
            }
            if !line.trim().is_empty() && !line.starts_with('#') {
                commands.push(line.to_owned());
            }
        }
    }
    if expect.is_some() || !commands.is_empty() {
        examples.push(Example { commands, expect });
    }
    examples
}

/// The literal `"name":value` pairs of an answer as the README shows it (numbers, booleans, null
/// and strings without `...`), in order.
fn shown_pairs(text: &str) -> Vec<(String, Value)> {
    let mut pairs = Vec::new();
    let mut rest = text;
    while let Some(q) = rest.find('"') {
        rest = &rest[q + 1..];
        let Some(end) = rest.find('"') else { break };
        let name = &rest[..end];
        let after = &rest[end + 1..];
        let Some(value) = after.strip_prefix(':') else {
            // A string value (or `...`), not a name: go on after it.
            rest = after;
            continue;
        };
        let value = value.trim_start();
        let literal = if let Some(s) = value.strip_prefix('"') {
            s.find('"').map(|e| &value[..e + 2])
        } else {
            let len = value.find([',', '}', ' ']).unwrap_or(value.len());
            Some(&value[..len])
        };
        if let Some(lit) = literal.filter(|l| !l.contains("...")) {
            if let Ok(v) = serde_json::from_str::<Value>(lit) {
                if !v.is_object() && !v.is_array() {
                    pairs.push((name.to_owned(), v));
                }
            }
        }
        rest = after;
    }
    pairs
}

/// Whether some object in `v` has `name` with `value`.
fn has_pair(v: &Value, name: &str, value: &Value) -> bool {
    match v {
        Value::Object(m) => m.get(name) == Some(value) || m.values().any(|c| has_pair(c, name, value)),
        Value::Array(a) => a.iter().any(|c| has_pair(c, name, value)),
        _ => false,
    }
}

/// An answer as `curl -si` prints it: status, headers (names lowercased) and the JSON body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

fn parse_answer(output: &str) -> Option<Answer> {
    let mut lines = output.lines().skip_while(|l| !l.starts_with("HTTP/"));
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    for line in lines.by_ref() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let body_text: String = lines.collect::<Vec<_>>().join("\n");
    let body = serde_json::from_str(body_text.trim()).unwrap_or(Value::Null);
    Some(Answer { status, headers, body })
}

/// Checks one answer against its `# =>` text; returns what did not hold.
fn check(expect: &str, output: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    let Some(answer) = parse_answer(output) else {
        return vec!["no HTTP answer in the output (is the command `curl -si`, or its answer echoed?)".into()];
    };
    let shown_status: u16 = expect
        .split_whitespace()
        .next()
        .map(|s| s.trim_end_matches(','))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("`# => {expect}` does not start with a status"));
    if answer.status != shown_status {
        wrong.push(format!("status {} where the README shows {shown_status}", answer.status));
    }
    // A `Retry-After` counts down, so its number is an illustration: the header must be there, agree
    // with the body's retryAfterSeconds, and be within a lease.
    if expect.contains("Retry-After:") {
        match answer.headers.iter().find(|(k, _)| k == "retry-after").map(|(_, v)| v.parse::<u64>()) {
            Some(Ok(s)) if (1..=LEASE_TTL).contains(&s) => {
                let in_body = answer.body.pointer("/error/retryAfterSeconds").and_then(Value::as_u64);
                if in_body.is_some_and(|b| b != s) {
                    wrong.push(format!("Retry-After {s} but retryAfterSeconds {in_body:?}"));
                }
            }
            other => wrong.push(format!("Retry-After should be 1 to {LEASE_TTL} seconds, is {other:?}")),
        }
    }
    for (name, value) in shown_pairs(expect) {
        if name == "retryAfterSeconds" {
            continue; // checked with Retry-After above
        }
        if !has_pair(&answer.body, &name, &value) {
            wrong.push(format!("no \"{name}\":{value} in the answer"));
        }
    }
    wrong
}

/// `scripts/run` with its extra arguments, killed on drop (it `exec`s the runner).
struct Runner {
    _child: tokio::process::Child,
    base: String,
    log: PathBuf,
}

async fn start_runner(dir: &Path) -> Runner {
    let profile = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent()?.file_name()?.to_str().map(str::to_owned))
        .filter(|p| p == "release")
        .unwrap_or_else(|| "debug".into());
    let log = dir.join("runner.log");
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(repo_root().join("scripts/run"))
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(dir)
        // The README's defaults: Redis on 127.0.0.1:6379, which scripts/run starts when none answers.
        .env_remove("SEATKEEPER_REDIS_URL")
        .env("SEATKEEPER_ADMIN_TOKEN", ADMIN)
        .env("SEATKEEPER_LEDGER_URL", format!("sqlite://{}", dir.join("ledger.db").display()))
        .env("SEATKEEPER_RUN_PROFILE", &profile)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("runner log"))
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start scripts/run");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    // scripts/run may build first (a no-op after `cargo build --workspace`, minutes when stale).
    let base = tokio::time::timeout(Duration::from_secs(900), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(base) = line.strip_prefix("seatkeeper serving on ") {
                return Some(base.to_owned());
            }
            eprintln!("scripts/run: {line}");
        }
        None
    })
    .await;
    let base = match base {
        Ok(Some(base)) => base,
        other => panic!(
            "scripts/run did not start serving ({other:?}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    for _ in 0..200 {
        if reqwest::get(format!("{base}/health")).await.is_ok() {
            return Runner { _child: child, base, log };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the runner on {base} does not answer /health");
}

#[test]
fn using_it_section_parses_into_examples() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let examples = split_examples(&using_it_blocks(&readme));
    let shown: Vec<&str> = examples.iter().filter_map(|e| e.expect.as_deref()).collect();
    assert!(shown.len() >= 5, "too few answers shown in \"Using it\": {examples:#?}");
    for e in &examples {
        if e.expect.is_some() {
            assert!(!e.commands.is_empty(), "an answer with no command before it: {e:?}");
        }
    }
    // The parser itself, on the shapes the README uses.
    let pairs = shown_pairs(r#"409, Retry-After: 57 {"error":{"code":"seat_limit_reached","limit":2,"x":"..."}}"#);
    assert_eq!(pairs, vec![("code".into(), "seat_limit_reached".into()), ("limit".into(), 2.into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn using_it_examples_hold_against_scripts_run() {
    for tool in ["bash", "curl", "jq"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "the README's examples need {tool}: apt-get install {tool}");
    }
    let dir = std::env::temp_dir().join(unique("seatkeeper-readme-"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let runner = start_runner(&dir).await;
    let license = unique("acme-");

    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    assert!(readme.contains(&format!("ADMIN={ADMIN}")), "the examples' admin token is no longer {ADMIN:?}");
    let block = using_it_blocks(&readme).replace(README_BASE, &runner.base).replace("acme", &license);
    let examples = split_examples(&block);

    // One script, so that the variables the examples set (KEY, TOKEN) carry on; a marker line
    // before each example tells its output apart.
    let mut script = String::from("set -euo pipefail\n");
    for (i, e) in examples.iter().enumerate() {
        script.push_str(&format!("printf '\\n@@example {i}@@\\n'\n"));
        for c in &e.commands {
            script.push_str(c);
            script.push('\n');
        }
    }
    script.push_str("printf '\\n@@done@@\\n'\n");
    let script_path = dir.join("examples.sh");
    std::fs::write(&script_path, &script).expect("write the script");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("bash").arg(&script_path).current_dir(&dir).stdin(Stdio::null()).output(),
    )
    .await
    .expect("the examples did not finish within 2 minutes")
    .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let log = || std::fs::read_to_string(&runner.log).unwrap_or_default();
    assert!(
        out.status.success() && stdout.contains("@@done@@"),
        "the examples stopped ({}): {stderr}\nscript:\n{script}\nrunner log:\n{}",
        out.status,
        log()
    );

    let mut failures = Vec::new();
    let mut checked = 0;
    for (i, e) in examples.iter().enumerate() {
        let Some(expect) = &e.expect else { continue };
        let from = format!("@@example {i}@@\n");
        let section = stdout.split(&from).nth(1).expect("marker").split("\n@@").next().unwrap_or("");
        let wrong = check(expect, section);
        checked += 1;
        if !wrong.is_empty() {
            failures.push(format!(
                "example {i}:\n  {}\n  shows: # => {expect}\n  got:\n{section}\n  wrong: {}",
                e.commands.join("\n  "),
                wrong.join("; ")
            ));
        }
    }
    assert!(checked >= 5, "only {checked} answers checked");
    assert!(failures.is_empty(), "README \"Using it\" examples that do not hold:\n{}", failures.join("\n\n"));
    eprintln!("readme: {checked} examples hold");
    drop(runner);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The check itself: what the old README's "every seat taken" step got (a seat) fails it.
#[test]
fn check_reports_what_does_not_hold() {
    let shown = r#"409, Retry-After: 57 {"error":{"code":"seat_limit_reached","active":2,"retryAfterSeconds":57}}"#;
    let took_a_seat =
        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\r\n{\"seats\":{\"active\":1,\"limit\":2}}";
    let wrong = check(shown, took_a_seat);
    assert_eq!(wrong.len(), 4, "{wrong:?}"); // the status, Retry-After, the code, "active"
    let refused = "HTTP/1.1 409 Conflict\r\nretry-after: 88\r\n\r\n\
        {\"error\":{\"active\":2,\"code\":\"seat_limit_reached\",\"retryAfterSeconds\":88}}";
    assert_eq!(check(shown, refused), Vec::<String>::new());
}
