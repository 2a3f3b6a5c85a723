//! Host tests of the process tree: `trace -f` follows children in the kernel, and `verify`
//! checks every process a command forks, each on its own. Real eBPF on this kernel, real
//! programs (the system's `sh` and `ls`, and the workload).


use mmap_trace_tests::cli::{cli, json_lines, process_records, split_summary, stderr, workload_path};
use serde_json::Value;

fn out_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("host-tree-{name}-{}.jsonl", std::process::id()))
}

/// Runs `mmap-trace ARGS -o FILE -- sh -c SCRIPT`; its status, stderr and the records.
fn run_sh(args: &[&str], name: &str, script: &str) -> (std::process::ExitStatus, String, Vec<Value>) {
    let file = out_file(name);
    let out = cli()
        .args(args)
        .arg("-o")
        .arg(&file)
        .args(["--", "sh", "-c", script])
        .output()
        .expect("run mmap-trace");
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    (out.status, stderr(&out), json_lines(&text))
}

/// `verify -- sh -c '…'` checks the shell, `ls` and the workload it forks: one process
/// record each, every one with checkpoints and no mismatch, and the summary counts them.
#[test]
fn verify_checks_every_process_of_a_shell_tree() {
    let script = format!("true; ls / >/dev/null; {} --scenario anon >/dev/null", workload_path().display());
    let (status, err, records) = run_sh(&["verify", "--json"], "verify", &script);
    let (_, summary) = split_summary(&records);
    let processes = process_records(&records);
    assert!(status.success(), "verify failed: {err}");
    assert!(processes.len() >= 3, "sh, ls and the workload: {processes:?}\n{err}");
    assert_eq!(summary["processes"], processes.len(), "{summary}");
    assert_eq!(summary["mismatches"], 0, "{summary}");
    for p in &processes {
        assert!(p["checkpoints"].as_u64().unwrap() > 0, "a process never checked: {p}");
        assert_eq!(p["mismatches"], 0, "{p}");
    }
    // The children name their parent; the command itself has none.
    let root = processes.iter().filter(|p| p.get("parent").is_none()).count();
    assert_eq!(root, 1, "{processes:?}");
    // Every process line on stderr too.
    assert_eq!(err.matches("mmap-trace: verify: pid ").count(), processes.len(), "{err}");
}

/// `--no-follow-forks` checks the command alone.
#[test]
fn verify_without_following_checks_one_process() {
    let (status, err, records) =
        run_sh(&["verify", "--json", "--no-follow-forks"], "nofollow", "true; ls / >/dev/null; true");
    let processes = process_records(&records);
    assert!(status.success(), "verify failed: {err}");
    assert_eq!(processes.len(), 1, "{processes:?}");
}

/// `trace -f -- sh -c 'ls'` shows ls's own mmaps (its dynamic loader's among them), and
/// the fork that made it; without -f, only the shell's.
#[test]
fn trace_follow_forks_shows_the_children() {
    let script = "ls / >/dev/null; true";
    let (status, err, records) = run_sh(&["trace", "--json", "-f"], "trace-f", script);
    assert!(status.success(), "trace failed: {err}");
    let (events, summary) = split_summary(&records);
    let sh = events[0]["pid"].clone();
    let forks: Vec<&Value> = events.iter().filter(|e| e["probe"] == "fork").collect();
    assert!(!forks.is_empty(), "no fork event: {summary}");
    let ls_mmaps: Vec<&Value> =
        events.iter().filter(|e| e["comm"] == "ls" && e["probe"] == "mmap" && e["pid"] != sh).collect();
    assert!(ls_mmaps.len() >= 5, "ls's mmaps: {ls_mmaps:?}");
    assert!(
        forks.iter().any(|f| f["child_pid"] == ls_mmaps[0]["pid"]),
        "the fork that made ls ({}) is not in {forks:?}",
        ls_mmaps[0]["pid"]
    );
    assert!(summary["ended"].as_str().unwrap().contains("exited"), "{summary}");

    let (status, err, records) = run_sh(&["trace", "--json"], "trace-nof", script);
    assert!(status.success(), "trace failed: {err}");
    let (events, _) = split_summary(&records);
    assert!(events.iter().all(|e| e["comm"] != "ls"), "ls traced without -f");
}

/// -f needs a process to follow.
#[test]
fn follow_forks_needs_a_pid_or_a_command() {
    let out = cli().args(["trace", "-f", "--comm", "nothing", "-d", "0.1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--follow-forks follows the children of --pid or -- CMD"), "{}", stderr(&out));
}
