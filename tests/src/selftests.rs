//! The Linux mm selftests as a suite: each test of the manifest `cargo xtask` built (its
//! `selftests.rs`) runs alone, then under `mmap-trace verify`. A test that fails or skips
//! alone is reported and not counted; every other one must verify with 0 mismatches and no
//! lost event, and end with the same kselftest verdict (its `# Totals:` line and exit
//! status) as alone. Both runs have the same, fixed address-space layout (see
//! `run_limited`). The same code runs on the host and in the guest: where the
//! binaries are comes from `MMTRACE_SELFTESTS`.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{cli, without_randomization};

const ENV: &str = "MMTRACE_SELFTESTS";
const ENV_ERROR: &str = "MMTRACE_SELFTESTS_ERROR";
/// kselftest's exit status for a skipped test (KSFT_SKIP).
const KSFT_SKIP: i32 = 4;
const TIMED_OUT: &str = "killed at the time limit";
/// How many MISMATCH lines, and newly failing cases, one test's report shows.
const SHOWN: usize = 20;

/// One run of the manifest: a label, the binary and its arguments.
pub struct Entry {
    pub label: String,
    pub binary: PathBuf,
    pub args: Vec<String>,
}

/// The manifest's first comment (what tree they came from) and its entries.
pub fn manifest() -> (String, Vec<Entry>) {
    let dir = match std::env::var_os(ENV) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var(ENV_ERROR) {
            Ok(why) => panic!("the mm selftests could not be prepared: {why}"),
            Err(_) => panic!(
                "{ENV} is not set: it names the mm selftests cargo xtask builds. Run this \
                 with `cargo xtask test` (host and guests), or in the guest with `cargo \
                 xtask vm -- /mmtrace/bin/guest_selftests --test-threads=1`"
            ),
        },
    };
    let path = dir.join("manifest");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the selftests' manifest {} ({e}): cargo xtask writes it with the \
             built tests; its output says why it could not",
            path.display()
        )
    });
    parse_manifest(&text, &dir)
}

fn parse_manifest(text: &str, dir: &Path) -> (String, Vec<Entry>) {
    let mut source = String::new();
    let mut entries = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            if source.is_empty() {
                source = comment.trim().to_owned();
            }
            continue;
        }
        let mut fields = line.split('\t');
        let (Some(label), Some(binary)) = (fields.next(), fields.next()) else {
            continue;
        };
        entries.push(Entry {
            label: label.to_owned(),
            binary: dir.join(binary),
            args: fields.map(str::to_owned).collect(),
        });
    }
    (source, entries)
}

/// One run's end: its exit status as a shell shows it, or None when it was killed at
/// the time limit.
#[derive(Debug)]
struct Ended {
    status: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `cmd` in its own process group with stdout and stderr to files in `dir`; kills the
/// group at `limit`.
///
/// The run starts without address-space randomization (`ADDR_NO_RANDOMIZE`, what
/// `setarch -R` sets), kept across exec: under verify it reaches the test through verify's
/// own spawn. Some selftests place fixed mappings next to ones the kernel randomizes, so
/// their verdict depends on the draw: mremap_test maps a 40 MiB "preamble" below the first
/// free slot it finds above the randomized heap of its non-PIE binary and fails with EEXIST
/// when the two meet (2 of 80 runs alone on this project's host). With one layout for both
/// runs, a verdict that differs under verify is verify's doing, not the draw's.
fn run_limited(mut cmd: Command, dir: &Path, name: &str, limit: Duration) -> Ended {
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    let out = fs::File::create(&out_path).expect("create stdout file");
    let err = fs::File::create(&err_path).expect("create stderr file");
    let started = Instant::now();
    without_randomization(&mut cmd);
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a selftest") {
            break Some(status);
        }
        if started.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever is left of the group goes too: a test's forked helpers, or a target that
    // verify let go of when it stopped with an error, would run on into the next test.
    // SAFETY: kill(2) on the group made for this child.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    if status.is_none() {
        let _ = child.wait();
    }
    Ended {
        status: status.map(shell_status),
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

fn shell_status(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The last `# Totals:` line of kselftest's output.
pub fn totals(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("# Totals:"))
        .map(|l| l.trim().to_owned())
}

/// The names of the cases kselftest reported `not ok` (without their numbers).
fn not_ok(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("not ok "))
        .map(|rest| {
            rest.split_once(' ')
                .map_or(rest, |(_, name)| name)
                .trim()
                .to_owned()
        })
        .collect()
}

/// The command's status from verify's summary: `command exited (status 1)` is 1, `(killed
/// by signal 9)` is 137.
pub fn target_status(ended: &str) -> Option<i32> {
    let inner = ended.strip_prefix("command exited (")?.strip_suffix(')')?;
    if let Some(code) = inner.strip_prefix("status ") {
        return code.parse().ok();
    }
    inner
        .strip_prefix("killed by signal ")
        .and_then(|s| s.parse::<i32>().ok())
        .map(|s| 128 + s)
}

/// A selftest's verdict: its `# Totals:` line (or the last line, for a test that printed
/// none) and exit status; `unknown` says why there is no status.
fn verdict(totals: Option<&str>, stdout: &str, status: Option<i32>, unknown: &str) -> String {
    let what = totals.map_or_else(
        || {
            let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
            format!("no Totals line (last line: {:?})", last.unwrap_or(""))
        },
        |t| format!("\"{t}\""),
    );
    match status {
        Some(s) => format!("{what}, exit {s}"),
        None => format!("{what}, {unknown}"),
    }
}

/// What one test came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Alone and under verify with the same verdict, verified with nothing wrong.
    Passed,
    /// Counted, and something differed: the report says what.
    Failed,
    /// Skipped or failed alone: reported, not counted.
    NotCounted,
}

/// Runs one entry alone and under verify, writes its report to `out` and returns its
/// outcome.
fn check(entry: &Entry, limit: Duration, out: &mut String) -> Outcome {
    let dir = std::env::temp_dir().join(format!(
        "mm-selftest-{}-{}",
        std::process::id(),
        entry.label.replace(' ', "_")
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the test's directory");

    let mut alone = Command::new(&entry.binary);
    alone.args(&entry.args);
    let alone = run_limited(alone, &dir, "alone", limit);
    let alone_totals = totals(&alone.stdout);
    let label = &entry.label;
    let skipped = alone.status == Some(KSFT_SKIP);
    if alone.status != Some(0) {
        let why = if skipped { "skipped" } else { "failed" };
        let _ = writeln!(
            out,
            "NOT COUNTED {label}: {why} alone ({}; {:.1} s)",
            verdict(
                alone_totals.as_deref(),
                &alone.stdout,
                alone.status,
                TIMED_OUT
            ),
            alone.elapsed.as_secs_f64()
        );
        for case in not_ok(&alone.stdout).iter().take(SHOWN) {
            let _ = writeln!(out, "      not ok alone: {case}");
        }
        let _ = fs::remove_dir_all(&dir);
        return Outcome::NotCounted;
    }

    let record = dir.join("verify.jsonl");
    let mut verified = cli();
    verified
        .args(["verify", "--json", "-o"])
        .arg(&record)
        .arg("--")
        .arg(&entry.binary)
        .args(&entry.args);
    let under = run_limited(verified, &dir, "verify", limit);
    let records: Vec<Value> = fs::read_to_string(&record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = records.iter().rev().find(|r| r["type"] == "summary");
    let under_status = summary
        .and_then(|s| s["ended"].as_str())
        .and_then(target_status);
    let under_totals = totals(&under.stdout);
    let mismatches = summary.and_then(|s| s["mismatches"].as_u64());
    let lost = summary.and_then(|s| s["lost_total"].as_u64());
    let checkpoints = summary
        .and_then(|s| s["checkpoints"].as_u64())
        .map_or_else(|| "?".to_owned(), |n| n.to_string());

    let same = alone_totals == under_totals && under_status == alone.status;
    let clean = under.status == Some(0) && mismatches == Some(0) && lost == Some(0);
    let times = format!(
        "{:.1} s alone, {:.1} s under verify, {checkpoints} checkpoints",
        alone.elapsed.as_secs_f64(),
        under.elapsed.as_secs_f64()
    );
    if same && clean {
        let _ = writeln!(
            out,
            "PASS {label}: verified, same verdict alone and under verify ({}; {times})",
            verdict(
                alone_totals.as_deref(),
                &alone.stdout,
                alone.status,
                TIMED_OUT
            )
        );
        let _ = fs::remove_dir_all(&dir);
        return Outcome::Passed;
    }
    let _ = writeln!(out, "FAIL {label} ({times}):");
    if !same {
        let _ = writeln!(
            out,
            "    verdict differs: alone {}; under verify {}",
            verdict(
                alone_totals.as_deref(),
                &alone.stdout,
                alone.status,
                TIMED_OUT
            ),
            verdict(
                under_totals.as_deref(),
                &under.stdout,
                under_status,
                if under.status.is_none() {
                    TIMED_OUT
                } else {
                    "no exit status (verify wrote no summary)"
                }
            )
        );
        let before = not_ok(&alone.stdout);
        let newly: Vec<String> = not_ok(&under.stdout)
            .into_iter()
            .filter(|c| !before.contains(c))
            .collect();
        for case in newly.iter().take(SHOWN) {
            let _ = writeln!(out, "      not ok under verify only: {case}");
        }
        if newly.len() > SHOWN {
            let _ = writeln!(out, "      … and {} more", newly.len() - SHOWN);
        }
    }
    if !clean {
        let count = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let _ = writeln!(
            out,
            "    verify: {} mismatches, {} events lost, exit {}",
            count(mismatches),
            count(lost),
            under.status.map_or_else(
                || "none (killed at the time limit)".to_owned(),
                |s| s.to_string()
            )
        );
        let lines: Vec<&str> = under
            .stderr
            .lines()
            .filter(|l| l.contains("MISMATCH"))
            .collect();
        for l in lines.iter().take(SHOWN) {
            let _ = writeln!(out, "      {l}");
        }
        if lines.len() > SHOWN {
            let _ = writeln!(
                out,
                "      … and {} more MISMATCH lines",
                lines.len() - SHOWN
            );
        }
        if summary.is_none() {
            // No summary: verify itself failed; its error line says why (else its last
            // words).
            let lines: Vec<&str> = under.stderr.lines().collect();
            let errors: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.contains("error"))
                .collect();
            let said = if errors.is_empty() {
                &lines[lines.len().saturating_sub(3)..]
            } else {
                &errors[..]
            };
            for l in said.iter().take(SHOWN) {
                let _ = writeln!(out, "      verify said: {l}");
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
    Outcome::Failed
}

/// How long one run (alone, or under verify) may take: a hang is what it catches. The
/// longest run seen took 1.4 s on the host and 40 s in a TCG guest (soft-dirty under
/// verify on 6.1: 40,050 checkpoints).
pub fn limit() -> Duration {
    if std::env::var_os("MMTRACE_GUEST").is_some() {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(60)
    }
}

/// Runs every test of the manifest, printing one report per test as it finishes (on the
/// real stdout: libtest would hide a passing test's prints) and a summary; panics if a
/// counted test failed or none could be counted.
pub fn run_suite() {
    let limit = limit();
    let (source, entries) = manifest();
    let started = Instant::now();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    say(&format!(
        "mm selftests: {source}; kernel {}; {} runs, each alone then under verify, both \
         without address-space randomization (limit {} s each)\n",
        kernel.trim(),
        entries.len(),
        limit.as_secs()
    ));
    let (mut passed, mut failed, mut not_counted) = (Vec::new(), Vec::new(), Vec::new());
    for entry in &entries {
        let mut report = String::new();
        let outcome = check(entry, limit, &mut report);
        say(&report);
        match outcome {
            Outcome::Passed => passed.push(entry.label.as_str()),
            Outcome::Failed => failed.push(entry.label.as_str()),
            Outcome::NotCounted => not_counted.push(entry.label.as_str()),
        }
    }
    let summary = format!(
        "mm selftests: {} counted, {} passed alone and under verify, {} FAILED{}; {} not \
         counted (skipped or failed alone){}; {:.0} s\n",
        passed.len() + failed.len(),
        passed.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        },
        not_counted.len(),
        if not_counted.is_empty() {
            String::new()
        } else {
            format!(" ({})", not_counted.join(", "))
        },
        started.elapsed().as_secs_f64()
    );
    say(&summary);
    assert!(
        failed.is_empty(),
        "{} mm selftests differ under verify: {}",
        failed.len(),
        failed.join(", ")
    );
    assert!(
        !passed.is_empty(),
        "no mm selftest passed alone on this kernel, so nothing was checked under verify"
    );
}

/// Writes straight to stdout: libtest captures `print!` of a passing test.
fn say(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_manifest() {
        let text = "# mm selftests of linux-source-7.2 7.2.13-1, built by cargo xtask\n\
                    mremap_test\tmremap_test\n\
                    uffd-stress anon\tuffd-stress\tanon\t20\t16\n";
        let (source, entries) = parse_manifest(text, Path::new("/st"));
        assert_eq!(
            source,
            "mm selftests of linux-source-7.2 7.2.13-1, built by cargo xtask"
        );
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].label, "uffd-stress anon");
        assert_eq!(entries[1].binary, Path::new("/st/uffd-stress"));
        assert_eq!(entries[1].args, ["anon", "20", "16"]);
        assert!(entries[0].args.is_empty());
    }

    #[test]
    fn reads_kselftest_output() {
        let out = "TAP version 13\n1..3\nok 1 a\nnot ok 2 merge.mprotect_unfaulted_left\n\
                   ok 3 # SKIP c\n# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0\n";
        assert_eq!(
            totals(out).as_deref(),
            Some("# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0")
        );
        assert_eq!(not_ok(out), ["merge.mprotect_unfaulted_left"]);
        assert_eq!(totals("1..0 # SKIP soft-dirty is not support\n"), None);
    }

    #[test]
    fn reads_the_commands_status_from_verify() {
        assert_eq!(target_status("command exited (status 0)"), Some(0));
        assert_eq!(target_status("command exited (status 1)"), Some(1));
        assert_eq!(
            target_status("command exited (killed by signal 9)"),
            Some(137)
        );
        assert_eq!(target_status("command exited (status unknown)"), None);
        assert_eq!(target_status("SIGINT"), None);
    }

    #[test]
    fn says_a_verdict_without_totals() {
        assert_eq!(
            verdict(None, "TAP version 13\n1..0 # SKIP no\n", Some(4), TIMED_OUT),
            "no Totals line (last line: \"1..0 # SKIP no\"), exit 4"
        );
        assert_eq!(
            verdict(Some("# Totals: pass:1"), "", None, TIMED_OUT),
            "\"# Totals: pass:1\", killed at the time limit"
        );
    }
}
