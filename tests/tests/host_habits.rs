//! Host tests of what a bcc, strace or container user reaches for (issue 18): the trace
//! never mixed with the traced command's output, `--cgroup`, `-T`. Real eBPF, as root;
//! `cargo xtask test` runs them (and sets MMTRACE_CLI/MMTRACE_WORKLOAD).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
};

use mmap_trace_tests::{
    cli::{cli, json_lines, split_summary, stderr, stdout, workload_path},
    stress::wait_ready,
    workload::{Call, match_calls, parse_calls},
};
use serde_json::Value;

/// One trace at a time in this binary: a machine-wide trace must not see another test's
/// workload.
static ONE: Mutex<()> = Mutex::new(());

fn one() -> std::sync::MutexGuard<'static, ()> {
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The workload's account of its calls among other lines (the tracer's notes).
fn calls_in(text: &str) -> Vec<Call> {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("{\"call\""))
        .collect();
    parse_calls(&lines.join("\n"))
}

/// `trace --json -- CMD | jq .`: standard output is the trace alone; the command's own
/// standard output (the workload prints its calls as JSON lines) arrives on standard
/// error, whole, and the trace holds every call it reports.
#[test]
fn trace_on_stdout_command_output_on_stderr() {
    let _one = one();
    let run = cli()
        .args(["trace", "--json", "--"])
        .arg(workload_path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let records = json_lines(&stdout(&run));
    let (events, summary) = split_summary(&records);
    assert!(
        records.iter().all(|r| r.get("call").is_none()),
        "command output on stdout"
    );
    let calls = calls_in(&stderr(&run));
    assert!(
        calls.len() >= 14,
        "the workload's output is not on stderr: {}",
        stderr(&run)
    );
    match_calls(&calls, events).unwrap();
    assert!(
        summary["ended"]
            .as_str()
            .unwrap()
            .starts_with("command exited (status 0)")
    );

    // The table too: nothing but the header, event rows and `#` summary lines.
    let run = cli()
        .args(["trace", "--"])
        .arg(workload_path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let table = stdout(&run);
    assert!(table.lines().next().unwrap().contains("TIME(s)"), "{table}");
    assert!(
        !table.contains("{\"call\""),
        "command output in the table:\n{table}"
    );
    assert_eq!(
        calls_in(&stderr(&run)).len(),
        calls.len(),
        "{}",
        stderr(&run)
    );

    // With -o FILE the command keeps its standard output.
    let file = std::env::temp_dir().join(format!("habits-o-{}.jsonl", std::process::id()));
    let run = cli()
        .args(["trace", "--json", "-o"])
        .arg(&file)
        .arg("--")
        .arg(workload_path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(parse_calls(&stdout(&run)).len(), calls.len());
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    match_calls(
        &parse_calls(&stdout(&run)),
        split_summary(&json_lines(&text)).0,
    )
    .unwrap();
}

/// Seconds since local midnight, now.
fn local_seconds_of_day() -> i64 {
    // SAFETY: time(NULL) and localtime_r with valid pointers.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        i64::from(tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec)
    }
}

/// `-T`: every row's time is the wall-clock time of day at which the call ran, i.e.
/// between the test's own readings of the clock before and after the run.
#[test]
fn dash_t_prints_the_time_of_day() {
    let _one = one();
    let before = local_seconds_of_day();
    let run = cli()
        .args(["trace", "-T", "--"])
        .arg(workload_path())
        .output()
        .unwrap();
    let after = local_seconds_of_day() + 1;
    assert!(run.status.success(), "{}", stderr(&run));
    let table = stdout(&run);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert_eq!(header.split_whitespace().next(), Some("TIME"), "{header}");
    let rows: Vec<&str> = lines.filter(|l| !l.starts_with('#')).collect();
    assert!(rows.len() >= 14, "{table}");
    for row in rows {
        let time = row.split_whitespace().next().unwrap();
        let parts: Vec<&str> = time.split([':', '.']).collect();
        assert!(
            parts.len() == 4 && parts.iter().map(|p| p.len()).eq([2, 2, 2, 6]),
            "not HH:MM:SS.ffffff: {row}"
        );
        let n: Vec<i64> = parts.iter().map(|p| p.parse().unwrap()).collect();
        let secs = n[0] * 3600 + n[1] * 60 + n[2];
        // Modulo a day, so a run across midnight is judged right too.
        let span = (after - before).rem_euclid(86_400);
        assert!(
            (secs - before).rem_euclid(86_400) <= span,
            "{time} outside the run ({before}..{after} s of day)"
        );
    }
    let json = cli()
        .args(["trace", "-T", "--json", "--", "/bin/true"])
        .output()
        .unwrap();
    assert!(
        !json.status.success() && stderr(&json).contains("cannot be used with"),
        "{}",
        stderr(&json)
    );
}

/// The cgroup2 mount (on a hybrid system, /sys/fs/cgroup/unified).
fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next() == Some("cgroup2"))
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .expect("no cgroup2 mount in /proc/self/mountinfo: --cgroup needs cgroup v2")
}

/// A cgroup made for the test, removed (with its children) when dropped.
struct TestCgroup {
    dirs: Vec<PathBuf>,
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `sh -c 'echo $$ > CGROUP/cgroup.procs && SCRIPT'`: a shell that joins the cgroup, then runs
/// SCRIPT (with $W the workload).
fn in_cgroup(cgroup: &Path, script: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && {script}",
            cgroup.display()
        ))
        .env("W", workload_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// `trace --cgroup DIR` sees exactly the processes of DIR and below: a process that joins
/// DIR (exec'ing the workload), a shell in DIR/inner and the workload it forks; not the
/// same workload run outside, nor anything else on the machine. Each event names its
/// cgroup (`cgroup_id` is the directory's inode, `cgroup` its path).
#[test]
fn cgroup_filter_traces_exactly_the_cgroup() {
    let _one = one();
    let mount = cgroup2_mount();
    let dir = mount.join(format!("mmtrace-test-{}", std::process::id()));
    let inner = dir.join("inner");
    let _cleanup = TestCgroup {
        dirs: vec![dir.clone(), inner.clone()],
    };
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    std::fs::create_dir(&inner).unwrap();
    let name = |p: &Path| format!("/{}", p.strip_prefix(&mount).unwrap().display());
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();

    let mut tracer = cli()
        .args(["trace", "--json", "--cgroup"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tracer_stderr = wait_ready(&mut tracer);
    let run = |mut c: Command| {
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        (pid, out)
    };
    let (first_pid, first) = run(in_cgroup(&dir, "exec \"$W\""));
    // Not the last command, so the shell forks the workload rather than exec it.
    let (shell_pid, nested) = run(in_cgroup(&inner, "\"$W\"; echo done"));
    let (outside_pid, outside) = run(Command::new(workload_path()));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let out = tracer.wait_with_output().unwrap();
    let notes = tracer_stderr.join().unwrap();
    assert!(out.status.success(), "{notes}");
    assert!(
        notes.contains(&format!("in cgroup {} and below", name(&dir))),
        "{notes}"
    );
    let records = json_lines(&stdout(&out));
    let (events, summary) = split_summary(&records);
    assert_eq!(summary["lost_total"], 0, "{summary}");

    let pid_of = |e: &Value| e["pid"].as_u64().unwrap() as u32;
    let of = |pid: u32| -> Vec<Value> {
        events
            .iter()
            .filter(|e| pid_of(e) == pid)
            .cloned()
            .collect()
    };
    // The nested workload is the shell's child: the one other pid, in inner.
    let others: std::collections::BTreeSet<u32> = events
        .iter()
        .map(pid_of)
        .filter(|p| ![first_pid, shell_pid].contains(p))
        .collect();
    assert_eq!(
        others.len(),
        1,
        "pids besides {first_pid} and {shell_pid}: {others:?} in {events:?}"
    );
    let child_pid = *others.first().unwrap();
    assert!(
        child_pid != outside_pid,
        "the workload outside the cgroup was traced"
    );
    assert!(of(outside_pid).is_empty());
    for (pid, cgroup) in [(first_pid, &dir), (shell_pid, &inner), (child_pid, &inner)] {
        for e in of(pid) {
            assert_eq!(e["cgroup"], name(cgroup), "{e}");
            assert_eq!(e["cgroup_id"].as_u64(), Some(ino(cgroup)), "{e}");
        }
    }
    // Every call of both workloads inside the cgroup.
    match_calls(&parse_calls(&stdout(&first)), &of(first_pid)).unwrap();
    let child_events = of(child_pid);
    assert!(
        child_events.iter().all(|e| e["comm"] == "mmap-workload"),
        "{child_events:?}"
    );
    match_calls(&calls_in(&stdout(&nested)), &child_events).unwrap();
    assert!(
        parse_calls(&stdout(&outside)).len() >= 14,
        "the outside workload ran"
    );

    // Clear refusals: a path that is not there, a directory that is not a cgroup.
    let missing = cli()
        .args(["trace", "--cgroup"])
        .arg(dir.join("nope"))
        .output()
        .unwrap();
    assert!(
        stderr(&missing).contains("no such cgroup directory"),
        "{}",
        stderr(&missing)
    );
    let not_cgroup = cli().args(["trace", "--cgroup", "/tmp"]).output().unwrap();
    assert!(
        stderr(&not_cgroup).contains("is not a cgroup v2 directory"),
        "{}",
        stderr(&not_cgroup)
    );
    assert_eq!(not_cgroup.status.code(), Some(2));
}
