//! Host tests of the process tree: `trace -f` follows children in the kernel, and `verify`
//! checks every process a command forks, each on its own. Real eBPF on this kernel, real
//! programs (the system's `sh` and `ls`, and the workload).

use std::process::Command;

use mmap_trace_tests::cli::{
    cli, json_lines, process_records, split_summary, stderr, workload_path,
};
use serde_json::Value;

fn out_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("host-tree-{name}-{}.jsonl", std::process::id()))
}

/// Runs `mmap-trace ARGS -o FILE -- sh -c SCRIPT`; its status, stderr and the records.
fn run_sh(
    args: &[&str],
    name: &str,
    script: &str,
) -> (std::process::ExitStatus, String, Vec<Value>) {
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
    let script = format!(
        "true; ls / >/dev/null; {} --scenario anon >/dev/null",
        workload_path().display()
    );
    let (status, err, records) = run_sh(&["verify", "--json"], "verify", &script);
    let (_, summary) = split_summary(&records);
    let processes = process_records(&records);
    assert!(status.success(), "verify failed: {err}");
    assert!(
        processes.len() >= 3,
        "sh, ls and the workload: {processes:?}\n{err}"
    );
    assert_eq!(summary["processes"], processes.len(), "{summary}");
    assert_eq!(summary["mismatches"], 0, "{summary}");
    for p in &processes {
        assert!(
            p["checkpoints"].as_u64().unwrap() > 0,
            "a process never checked: {p}"
        );
        assert_eq!(p["mismatches"], 0, "{p}");
    }
    // The children name their parent; the command itself has none.
    let root = processes
        .iter()
        .filter(|p| p.get("parent").is_none())
        .count();
    assert_eq!(root, 1, "{processes:?}");
    // Every process line on stderr too.
    assert_eq!(
        err.matches("mmap-trace: verify: pid ").count(),
        processes.len(),
        "{err}"
    );
}

/// `--no-follow-forks` checks the command alone.
#[test]
fn verify_without_following_checks_one_process() {
    let (status, err, records) = run_sh(
        &["verify", "--json", "--no-follow-forks"],
        "nofollow",
        "true; ls / >/dev/null; true",
    );
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
    let ls_mmaps: Vec<&Value> = events
        .iter()
        .filter(|e| e["comm"] == "ls" && e["probe"] == "mmap" && e["pid"] != sh)
        .collect();
    assert!(ls_mmaps.len() >= 5, "ls's mmaps: {ls_mmaps:?}");
    assert!(
        forks.iter().any(|f| f["child_pid"] == ls_mmaps[0]["pid"]),
        "the fork that made ls ({}) is not in {forks:?}",
        ls_mmaps[0]["pid"]
    );
    assert!(
        summary["ended"].as_str().unwrap().contains("exited"),
        "{summary}"
    );

    let (status, err, records) = run_sh(&["trace", "--json"], "trace-nof", script);
    assert!(status.success(), "trace failed: {err}");
    let (events, _) = split_summary(&records);
    assert!(
        events.iter().all(|e| e["comm"] != "ls"),
        "ls traced without -f"
    );
}

/// -f needs a process to follow.
#[test]
fn follow_forks_needs_a_pid_or_a_command() {
    let out = cli()
        .args(["trace", "-f", "--comm", "nothing", "-d", "0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--follow-forks follows the children of --pid or -- CMD"),
        "{}",
        stderr(&out)
    );
}

/// Every scenario verifies with no mismatch and exit 0, in every process it makes; the
/// invisible ones observe exactly what they observe alone.
#[test]
fn verify_agrees_on_every_cause_and_name() {
    for scenario in mmap_trace_tests::cli::TRUTH_SCENARIOS {
        let run = mmap_trace_tests::cli::verify_workload(&[], &["--scenario", scenario]);
        let summary = run.summary();
        assert!(
            run.status.success() && summary["mismatches"] == 0 && summary["lost_total"] == 0,
            "{scenario}: verify disagreed (exit {:?}):\n{}\n{:?}",
            run.status.code(),
            run.stderr,
            run.mismatches()
        );
        assert!(
            summary["checkpoints"].as_u64().unwrap() > 0,
            "{scenario}: {summary}"
        );
        let processes = process_records(&run.records);
        assert_eq!(
            processes.len(),
            mmap_trace_tests::cli::processes_of(scenario),
            "{scenario}: {processes:?}"
        );
        if mmap_trace_tests::cli::INVISIBLE.contains(scenario) {
            mmap_trace_tests::cli::assert_unperturbed(scenario, &run);
        }
    }
}

/// Threads racing on the same addresses: the changes are applied in the order the
/// kernel took the mm's write lock, so no run of 8 or 16 threads gives a false mismatch.
#[test]
fn thread_storms_verify_in_every_run() {
    mmap_trace_tests::cli::assert_storms_verify(8, 20);
    mmap_trace_tests::cli::assert_storms_verify(16, 20);
}

/// shmat…shmdt with no mmap between: the catch-all makes a checkpoint of each (before it,
/// the segment was never seen), and stack growth is seen as a fault.
#[test]
fn the_catch_all_sees_calls_and_faults_the_probes_do_not() {
    let run = mmap_trace_tests::cli::verify_workload(&[], &["--scenario", "shmat-shmdt"]);
    let (events, _) = split_summary(&run.records);
    for call in ["shmat", "shmdt"] {
        assert!(
            events
                .iter()
                .any(|e| e["probe"] == "mm_lock" && e["syscall"] == call),
            "no catch-all record of {call}: {events:?}"
        );
    }
    let run = mmap_trace_tests::cli::verify_workload(&[], &["--scenario", "growsdown"]);
    let (events, _) = split_summary(&run.records);
    assert!(
        events
            .iter()
            .any(|e| e["probe"] == "mm_lock" && e["cause"] == "fault"),
        "{events:?}"
    );
}

/// With the shm model switched off (hidden --plant), the same scenario is proven by the
/// catch-all alone: an `unmodelled` record names each call and the run still passes.
#[test]
fn a_change_the_model_does_not_know_is_adopted_and_named() {
    let run = mmap_trace_tests::cli::verify_workload(
        &["--plant", "unmodel-shm"],
        &["--scenario", "shmat-shmdt"],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let unmodelled: Vec<&Value> = run
        .records
        .iter()
        .filter(|r| r["type"] == "unmodelled")
        .collect();
    let causes: Vec<&str> = unmodelled
        .iter()
        .map(|r| r["cause"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["shmat", "shmdt"], "{unmodelled:?}");
    assert!(
        unmodelled[0]["ranges"][0]["found"]
            .as_str()
            .unwrap()
            .contains("/SYSV"),
        "{unmodelled:?}"
    );
    assert_eq!(run.summary()["unmodelled"], 2, "{}", run.summary());
    assert_eq!(run.summary()["mismatches"], 0);
}

/// Ctrl-C on `verify --pid` lets the target go as it found it: running, not traced, and
/// not stopped by a SIGSTOP the probes had queued.
#[test]
fn interrupted_verify_leaves_the_target_running() {
    for _ in 0..3 {
        let mut target = Command::new(workload_path())
            .args(["--loop", "100000000"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = target.id();
        let mut verify = cli()
            .args(["verify", "--pid", &pid.to_string(), "-o", "/dev/null"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let err = mmap_trace_tests::stress::wait_ready(&mut verify);
        std::thread::sleep(std::time::Duration::from_millis(300));
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(verify.id() as i32, libc::SIGINT) };
        let _ = verify.wait().unwrap();
        let err = err.join().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let _ = target.kill();
        let _ = target.wait();
        assert!(
            err.contains("checkpoints"),
            "verify did not check anything: {err}"
        );
        assert_eq!(field("TracerPid:"), "0", "still traced after verify ended");
        assert!(
            !field("State:").starts_with('T'),
            "left stopped: {}",
            field("State:")
        );
    }
}

/// The gated syscall hooks (four copies of sys_enter and sys_exit taking turns, what
/// kernels that preempt BPF on syscall tracepoints get: mmap-trace-ebpf/src/syscalls.rs),
/// forced on here: every scenario still verifies with nothing lost, and trace reports
/// exactly the calls the single-program hooks report. The 7.x guest runs them for real.
#[test]
fn gated_syscall_hooks_report_every_call_once() {
    const GATE: &str = "MMTRACE_SYSCALL_GATE";
    for scenario in [
        "threads",
        "anon",
        "mremap-move",
        "split3",
        "shmat-shmdt",
        "fork-exec",
    ] {
        if !mmap_trace_tests::cli::SCENARIOS.contains(&scenario)
            && !mmap_trace_tests::cli::TRUTH_SCENARIOS.contains(&scenario)
        {
            panic!("{scenario} is not a workload scenario any more: update this test");
        }
        let file = out_file(&format!("gate-{scenario}"));
        let out = cli()
            .env(GATE, "1")
            .env("RUST_LOG", "info")
            .args(["verify", "--json", "-o"])
            .arg(&file)
            .arg("--")
            .arg(workload_path())
            .args(["--scenario", scenario])
            .output()
            .expect("run mmap-trace verify");
        let err = stderr(&out);
        let records = json_lines(&std::fs::read_to_string(&file).unwrap_or_default());
        let _ = std::fs::remove_file(&file);
        assert!(
            err.contains("syscall hooks: gated"),
            "{scenario}: gate not on:\n{err}"
        );
        let (_, summary) = split_summary(&records);
        assert!(
            out.status.success() && summary["mismatches"] == 0 && summary["lost_total"] == 0,
            "{scenario}: gated verify disagreed:\n{err}\n{summary}"
        );
    }
    // The workload's default sequence (one thread, every traced call, fixed) and shmat…
    // shmdt (the catch-all's calls): both forms report the same events, in order.
    let calls = |gate: &str, args: &[&str]| -> Vec<(String, Value)> {
        let file = out_file(&format!("gate-trace-{gate}-{}", args.len()));
        let out = cli()
            .env(GATE, gate)
            .args(["trace", "--json", "-o"])
            .arg(&file)
            .arg("--")
            .arg(workload_path())
            .args(args)
            .output()
            .expect("run mmap-trace trace");
        assert!(out.status.success(), "trace: {}", stderr(&out));
        let records = json_lines(&std::fs::read_to_string(&file).unwrap_or_default());
        let _ = std::fs::remove_file(&file);
        records
            .iter()
            .filter(|r| r["type"] == "event" && r["probe"] != "exec")
            .map(|r| {
                (
                    r["probe"].as_str().unwrap_or("").to_owned(),
                    r["ret"].clone(),
                )
            })
            .collect()
    };
    for (args, at_least, catch_all) in [
        (&[][..], 14, false),
        (&["--scenario", "shmat-shmdt"][..], 4, true),
    ] {
        let (single, gated) = (calls("0", args), calls("1", args));
        assert!(
            single.len() >= at_least,
            "{args:?}: too few calls traced: {single:?}"
        );
        assert!(
            !catch_all || single.iter().any(|c| c.0 == "mm_lock"),
            "{args:?}: no catch-all event: {single:?}"
        );
        assert_eq!(
            single.iter().map(|c| &c.0).collect::<Vec<_>>(),
            gated.iter().map(|c| &c.0).collect::<Vec<_>>(),
            "{args:?}: gated hooks reported other events"
        );
    }
}
