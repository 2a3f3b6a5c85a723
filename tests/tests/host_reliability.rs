//! Issue 7 on the host: the tracer under overload, target churn, signals at random
//! moments, and hostile arguments and environment. Run by `cargo xtask test` as root.
//! Each test prints a `RELIABILITY …` line with its figures.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use mmap_trace_tests::cli::{cli, json_lines, split_summary, stderr, stdout, workload_path};
use mmap_trace_tests::stress::{
    Rng, env_count, per_probe, report, seed_from, stress_path, wait_ready,
};

/// The traces here must not overlap with each other (one tracefs, shared CPUs).
static EXCLUSIVE: Mutex<()> = Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn assert_no_panic(what: &str, err: &str) {
    for bad in ["panicked", "RUST_BACKTRACE", "internal error"] {
        assert!(!err.contains(bad), "{what}: {bad:?} in stderr:\n{err}");
    }
}

/// A 4 KiB ring buffer and bursts of mremap calls (nothing else in the process makes
/// any): events kept + events lost = calls made, exactly. Once with the consumer stopped
/// (SIGSTOP) so the ring must overflow, once free-running.
#[test]
fn ring_buffer_overflow_is_counted_exactly() {
    let _g = exclusive();
    let calls = env_count("MMTRACE_STRESS_BURST", 200_000);
    let mut figures = Vec::new();
    for stopped in [true, false] {
        let mut tracer = cli()
            .args([
                "trace",
                "--json",
                "--ring-buffer-kib",
                "4",
                "--probes",
                "mremap",
                "--comm",
                "mmap-stress",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = wait_ready(&mut tracer);
        let pid = tracer.id() as i32;
        if stopped {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        let burst = Command::new(stress_path())
            .args(["mremap-burst", &calls.to_string()])
            .output()
            .unwrap();
        assert!(burst.status.success());
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGINT);
        }
        let out = tracer.wait_with_output().unwrap();
        let err = err.join().unwrap();
        assert!(out.status.success(), "{err}");
        assert_no_panic("overflow", &err);
        let records = json_lines(&stdout(&out));
        let (events, summary) = split_summary(&records);
        let kept = events.iter().filter(|e| e["probe"] == "mremap").count() as u64;
        let lost = per_probe(summary, "lost", "mremap");
        assert_eq!(per_probe(summary, "events", "mremap"), kept, "{summary}");
        assert_eq!(
            kept + lost,
            calls,
            "stopped={stopped}: kept {kept} + lost {lost} != {calls} calls: {summary}"
        );
        if stopped {
            assert!(
                lost > 0,
                "a stopped reader of a 4 KiB ring lost nothing of {calls} calls: {summary}"
            );
            assert!(
                err.contains("events were lost"),
                "the loss is not reported: {err}"
            );
        }
        figures.push(format!(
            "{}: kept={kept} lost={lost}",
            if stopped {
                "stopped_reader"
            } else {
                "free_reader"
            }
        ));
    }
    report(&format!(
        "RELIABILITY ring-overflow ring_kib=4 calls={calls} {}",
        figures.join(" ")
    ));
}

/// Thousands of short-lived processes under `--comm`: every one's call is counted, and
/// a process with another name is not.
#[test]
fn thousands_of_short_lived_processes_under_a_comm_filter() {
    let _g = exclusive();
    let procs = env_count("MMTRACE_STRESS_PROCS", 2000);
    let mut tracer = cli()
        .args([
            "trace",
            "--json",
            "--probes",
            "mremap",
            "--comm",
            "mmap-stress",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = wait_ready(&mut tracer);
    for _ in 0..procs {
        let s = Command::new(stress_path())
            .args(["mremap-burst", "1"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(s.success());
    }
    // Same calls under another name: must not be counted.
    let other = std::env::temp_dir().join(format!("other-name-{}", std::process::id()));
    std::fs::copy(stress_path(), &other).unwrap();
    Command::new(&other)
        .args(["mremap-burst", "5"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let _ = std::fs::remove_file(&other);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGTERM) };
    let out = tracer.wait_with_output().unwrap();
    let err = err.join().unwrap();
    assert!(out.status.success(), "{err}");
    let records = json_lines(&stdout(&out));
    let (events, summary) = split_summary(&records);
    assert_eq!(summary["ended"], "SIGTERM");
    let kept = events.len() as u64;
    let lost = per_probe(summary, "lost", "mremap");
    assert_eq!(
        kept + lost,
        procs,
        "{procs} processes, kept {kept} + lost {lost}: {summary}"
    );
    let pids: std::collections::BTreeSet<_> = events.iter().map(|e| e["pid"].to_string()).collect();
    assert_eq!(pids.len() as u64, kept, "one event per process");
    report(&format!(
        "RELIABILITY comm-churn processes={procs} kept={kept} lost={lost}"
    ));
}

/// A pid that exits ends the trace; its number reused by a new process is traced
/// afresh by a new run (nothing stale carries over).
#[test]
fn pid_exit_and_reuse() {
    let _g = exclusive();
    let mut first = Command::new("sleep").arg("0.5").spawn().unwrap();
    let pid = first.id();
    let out = cli()
        .args(["trace", "--json", "--pid", &pid.to_string()])
        .output()
        .unwrap();
    first.wait().unwrap();
    let records = json_lines(&stdout(&out));
    assert_eq!(split_summary(&records).1["ended"], "target process exited");
    // Ask the kernel for the same pid again (ns_last_pid), if it lets us.
    let reused = std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_ok();
    let mut second = Command::new(workload_path())
        .args(["--loop", "300000"])
        .spawn()
        .unwrap();
    if !(reused && second.id() == pid) {
        second.wait().unwrap();
        report("RELIABILITY pid-reuse skipped: the kernel gave another pid");
        return;
    }
    let out = cli()
        .args(["trace", "--json", "--pid", &pid.to_string()])
        .output()
        .unwrap();
    second.wait().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let records = json_lines(&stdout(&out));
    let (events, summary) = split_summary(&records);
    assert_eq!(summary["ended"], "target process exited");
    assert!(
        events.iter().all(|e| e["pid"] == pid),
        "events from another process"
    );
    report(&format!(
        "RELIABILITY pid-reuse pid={pid} events_of_second_process={}",
        events.len()
    ));
}

#[test]
fn commands_that_fail_or_exit_at_once() {
    let _g = exclusive();
    for (argv, ended) in [
        (&["/bin/true"][..], "command exited (status 0)"),
        (&["/bin/false"], "command exited (status 1)"),
    ] {
        let out = cli()
            .args(["trace", "--json", "--"])
            .args(argv)
            .output()
            .unwrap();
        assert_no_panic(argv[0], &stderr(&out));
        let records = json_lines(&stdout(&out));
        assert_eq!(split_summary(&records).1["ended"], ended, "{argv:?}");
    }
    let dir = std::env::temp_dir();
    let not_exec = dir.join(format!("not-exec-{}", std::process::id()));
    std::fs::write(&not_exec, "data").unwrap();
    for argv in [
        &["/no/such/cmd"][..],
        &[dir.to_str().unwrap()],
        &[not_exec.to_str().unwrap()],
        &[""],
    ] {
        let out = cli()
            .args(["trace", "--json", "--"])
            .args(argv)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{argv:?} succeeded");
        assert!(err.contains("cannot run"), "{argv:?}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.contains("error")).count(),
            1,
            "{argv:?}: one message: {err}"
        );
        assert_no_panic(argv[0], &err);
    }
    let _ = std::fs::remove_file(not_exec);
}

/// SIGINT or SIGTERM at a random moment of a JSON run under load: whole lines of valid
/// JSON, the summary last, exit 0. Seeded (MMTRACE_STRESS_SEED replays).
#[test]
fn signals_at_random_moments_leave_whole_json() {
    let _g = exclusive();
    let seed = seed_from("MMTRACE_STRESS_SEED");
    let iterations = env_count("MMTRACE_STRESS_SIGNALS", 25);
    let mut rng = Rng::new(seed);
    let mut events = 0;
    for i in 0..iterations {
        let (sig, name) = *rng.pick(&[(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")]);
        let to_file = rng.chance(50);
        let out_file =
            std::env::temp_dir().join(format!("rel-sig-{}-{i}.jsonl", std::process::id()));
        let mut c = cli();
        c.args(["trace", "--json"]);
        if to_file {
            c.arg("-o").arg(&out_file);
        }
        let mut tracer = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = wait_ready(&mut tracer);
        let mut load = Command::new(workload_path())
            .args(["--loop", "20000"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(tracer.id() as i32, sig) };
        let out = tracer.wait_with_output().unwrap();
        load.wait().unwrap();
        let err = err.join().unwrap();
        let what = format!("seed {seed} iteration {i} ({name}, to_file={to_file})");
        assert!(out.status.success(), "{what}: {err}");
        assert_no_panic(&what, &err);
        let text = if to_file {
            std::fs::read_to_string(&out_file).unwrap()
        } else {
            stdout(&out)
        };
        let _ = std::fs::remove_file(&out_file);
        assert!(
            text.ends_with('\n'),
            "{what}: output does not end with a whole line"
        );
        let records = json_lines(&text);
        let (ev, summary) = split_summary(&records);
        assert_eq!(summary["ended"], name, "{what}");
        assert_eq!(
            summary["events_total"],
            ev.len() as u64,
            "{what}: {summary}"
        );
        events += ev.len();
    }
    report(&format!(
        "RELIABILITY signals seed={seed} iterations={iterations} events={events}"
    ));
}

/// Every flag with garbage: one clear message, a non-zero exit, never a panic.
#[test]
fn garbage_arguments_give_one_clear_message() {
    let cases: &[&[&str]] = &[
        &["trace", "--pid", "0"],
        &["trace", "--pid", "-5"],
        &["trace", "--pid", "abc"],
        &["trace", "--pid", "99999999999999999999"],
        &["trace", "--comm", ""],
        &[
            "trace", "--comm", "a\u{1}b", "-d", "0.1", "--probes", "nope",
        ],
        &["trace", "--duration", "abc"],
        &["trace", "--duration", "inf"],
        &["trace", "--duration", "1e300"],
        &["trace", "--duration", "0"],
        &["trace", "--probes", ""],
        &["trace", "--probes", ",,,"],
        &["trace", "--probes", "MMAP"],
        &["trace", "--ring-buffer-kib", "0"],
        &["trace", "--ring-buffer-kib", "-1"],
        &["trace", "--ring-buffer-kib", "4294967296"],
        &["trace", "--ring-buffer-kib", "2097152"],
        &["trace", "--btf", "/dev/null", "--probes", "mmap_region"],
        &["trace", "--output", "/proc/version", "-d", "0.1"],
        &["trace", "--output", "", "-d", "0.1"],
        &["trace", "--driver-hook", "", "--probes", "driver_mmap"],
        &["trace", "--nonsense"],
        &["verify", "--pid", "1", "--", "true"],
        &["verify", "--pid", "999999999"], // above PID_MAX_LIMIT: never a live process
        &["verify-driver", "--offset", "abc"],
        &["verify-driver", "--pages", "-1"],
        &["verify-driver", "--device", "/dev/null"],
        &["verify-driver", "--device", "/no/such/dev"],
        &["report", "/no/such/trace.jsonl"],
        &["report", "/proc/version"],
        &["report", "/dev/null", "--html", "/no/such/dir/x.html"],
        &["bogus-command"],
    ];
    let _g = exclusive();
    for args in cases {
        let out = cli().args(*args).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded:\n{err}");
        assert_no_panic(&format!("{args:?}"), &err);
        assert!(!err.trim().is_empty(), "{args:?}: no message");
        let errors = err
            .lines()
            .filter(|l| l.starts_with("error:") || l.starts_with("mmap-trace: error:"))
            .count();
        assert_eq!(errors, 1, "{args:?}: want exactly one error line:\n{err}");
    }
    report(&format!("RELIABILITY bad-arguments cases={}", cases.len()));
}

/// The environment: not root, tracefs unmounted, BTF unreadable.
#[test]
fn hostile_environment_gives_clear_messages() {
    use std::os::unix::process::CommandExt as _;
    let _g = exclusive();
    // Not root, for every subcommand that needs it.
    for args in [
        &["trace", "-d", "0.1"][..],
        &["verify", "--", "/bin/true"],
        &["verify-driver"],
    ] {
        let out = cli().args(args).uid(65534).gid(65534).output().unwrap();
        let err = stderr(&out);
        assert!(
            !out.status.success() && err.contains("needs root"),
            "{args:?}: {err}"
        );
        assert_no_panic(args[0], &err);
    }
    // tracefs unmounted: the tool mounts it itself.
    while Command::new("umount")
        .arg("/sys/kernel/tracing")
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {}
    let out = cli()
        .args(["trace", "--json", "-d", "0.2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    split_summary(&json_lines(&stdout(&out)));
    // BTF unreadable (the kernel probes need it; only asked for where kprobes exist).
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        let btf = std::env::temp_dir().join(format!("unreadable-btf-{}", std::process::id()));
        std::fs::write(&btf, b"not btf").unwrap();
        let out = cli()
            .args(["trace", "--probes", "mmap_region", "-d", "0.1", "--btf"])
            .arg(&btf)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert_no_panic("bad btf", &stderr(&out));
        let _ = std::fs::remove_file(btf);
    }
}
