//! A long trace keeps flat memory: `trace --stacks --faults`, the mode that keeps the most
//! per process (the fault attribution's model, the symbolizer's mappings and unwinder,
//! the summary's rows), follows thousands of short-lived processes and its resident set
//! stays within 10% of what it was after a warm-up. Each process's state is released at
//! its exit record; what the summary keeps of exited processes is bounded. Real eBPF on
//! this kernel; `cargo xtask test` runs it (root).

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use mmap_trace_tests::{
    cli::{cli, json_lines, split_summary, workload_path},
    stress::wait_ready,
};

/// Processes started before the first measurement: the caches (the symbolizer's names
/// per file offset, the bounded stack cache, the allocator's arenas) reach their size.
const WARM_UP: usize = 1500;
/// Then this many more per round, measured after each.
const PER_ROUND: usize = 1000;
const ROUNDS: usize = 4;
/// Started at once (two shared cores: enough to keep the tracer busy).
const AT_ONCE: usize = 8;
/// The bound: resident memory after any round at most this much above the warm-up's.
const GROWTH_ALLOWED: f64 = 0.10;

/// `count` runs of the workload (a few mmaps, munmaps and page faults each), AT_ONCE at
/// a time; each must succeed.
fn churn(count: usize) {
    let workload = workload_path();
    let mut left = count;
    while left > 0 {
        let n = left.min(AT_ONCE);
        let children: Vec<_> = (0..n)
            .map(|_| {
                Command::new(&workload)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start mmap-workload")
            })
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success(), "mmap-workload failed");
        }
        left -= n;
    }
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("tracer status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[test]
fn a_trace_of_thousands_of_short_processes_keeps_flat_memory() {
    let out_file = std::env::temp_dir().join(format!("host-memory-{}.jsonl", std::process::id()));
    // --comm narrows the system-wide trace to the churn, so other work on this shared
    // machine neither adds state nor noise; every process is followed the same way.
    let mut tracer = cli()
        .args([
            "trace",
            "--stacks",
            "--faults",
            "--json",
            "--comm",
            "mmap-workload",
        ])
        .arg("--output")
        .arg(&out_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mmap-trace");
    let stderr = wait_ready(&mut tracer);
    let pid = tracer.id();
    churn(WARM_UP);
    // Let the reader and the symbolizer drain what the churn queued.
    std::thread::sleep(Duration::from_secs(2));
    let warm = rss_kib(pid);
    let mut after = Vec::new();
    for _ in 0..ROUNDS {
        churn(PER_ROUND);
        std::thread::sleep(Duration::from_secs(2));
        after.push(rss_kib(pid));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = tracer.wait().unwrap();
    let stderr = stderr.join().unwrap_or_default();
    assert!(status.success(), "mmap-trace failed: {stderr}");
    let text = std::fs::read_to_string(&out_file).expect("trace file");
    let _ = std::fs::remove_file(&out_file);
    let records = json_lines(&text);
    let (events, summary) = split_summary(&records);
    let processes: std::collections::BTreeSet<u64> =
        events.iter().filter_map(|e| e["pid"].as_u64()).collect();
    let total = WARM_UP + ROUNDS * PER_ROUND;
    println!(
        "trace --stacks --faults over {total} processes ({} seen, {} events, {} lost): \
         VmRSS {warm} KiB after {WARM_UP}, then {after:?} KiB after each {PER_ROUND} more",
        processes.len(),
        events.len(),
        summary["lost_total"]
    );
    // The trace really followed the churn: the processes, their faults, their stacks.
    assert!(
        processes.len() * 10 >= total * 9,
        "only {} of {total} processes traced",
        processes.len()
    );
    assert!(
        events.iter().any(|e| e["probe"] == "fault"),
        "no faults traced"
    );
    assert!(
        events.iter().any(|e| e["stack"].is_array()),
        "no stacks traced"
    );
    let bound = (warm as f64 * (1.0 + GROWTH_ALLOWED)) as u64;
    let most = *after.iter().max().unwrap();
    assert!(
        most <= bound,
        "VmRSS grew from {warm} KiB after the warm-up to {most} KiB (bound {bound} KiB, \
         +{:.0}%): {after:?}; per-process state is not released",
        GROWTH_ALLOWED * 100.0
    );
    let dropped = &summary["left_out"];
    println!("summary rows left out of exited processes: {dropped}");
}
