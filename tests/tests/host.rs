//! Host tests: the real CLI loads the real eBPF programs into this machine's kernel.
//! They need root; `cargo xtask test` runs them (and sets MMTRACE_CLI/MMTRACE_WORKLOAD).

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use mmap_trace_tests::{
    cli::{
        build_c, cli, json_lines, split_summary, stderr, stdout, without_randomization,
        workload_path,
    },
    stress::wait_ready,
    workload::{match_calls, parse_calls},
};

/// Tests that change global state (tracefs mounts) must not overlap with other traces.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

fn shared() -> std::sync::MutexGuard<'static, ()> {
    EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `mmap-trace trace --json TRACER_ARGS --output FILE -- mmap-workload ARGS`, which must
/// succeed: its output (the workload's account on stdout) and the trace file's text.
fn trace_workload(tracer_args: &[&str], args: &[&str]) -> (std::process::Output, String) {
    let out_file = std::env::temp_dir().join(format!("host-trace-{}.jsonl", std::process::id()));
    let run = cli()
        .args(["trace", "--json"])
        .args(tracer_args)
        .arg("--output")
        .arg(&out_file)
        .arg("--")
        .arg(workload_path())
        .args(args)
        .output()
        .expect("run mmap-trace");
    assert!(run.status.success(), "mmap-trace failed: {}", stderr(&run));
    let text = std::fs::read_to_string(&out_file).expect("trace file");
    let _ = std::fs::remove_file(&out_file);
    (run, text)
}

/// Issue #2's smoke test and issue #4's host test: every mmap/munmap/mprotect/mremap/brk
/// the workload makes appears in the JSON trace with the same arguments and result.
#[test]
fn trace_json_captures_every_call_of_a_command() {
    let _guard = shared();
    let (run, text) = trace_workload(&[], &[]);
    assert!(
        stderr(&run).contains("ready:"),
        "no ready line: {}",
        stderr(&run)
    );
    let calls = parse_calls(&stdout(&run));
    assert!(
        calls.len() >= 14,
        "the workload reported {} calls",
        calls.len()
    );
    let records = json_lines(&text);
    let (events, summary) = split_summary(&records);
    // The smoke part: a known mmap with the right length and flags.
    let first = &calls[0];
    assert!(
        events.iter().any(|e| e["probe"] == "mmap"
            && e["len"] == format!("{:#x}", first.args[1])
            && e["flags"] == "PRIVATE|ANONYMOUS"),
        "no 16 KiB anonymous private mmap event in {events:?}"
    );
    if let Err(e) = match_calls(&calls, events) {
        panic!("{e}\ntrace:\n{text}");
    }
    // Only the command's own process is traced.
    let pid = events[0]["pid"].clone();
    assert!(
        events.iter().all(|e| e["pid"] == pid),
        "events from another process"
    );
    // The file its fd named, from the kernel: the workload's temp file, deleted by the
    // time the trace is read, so neither /proc nor a path could say. match_calls has
    // compared its device and inode with the workload's fstat; the name is the kernel's.
    let file_maps: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["probe"] == "mmap" && e["fd"].as_i64().unwrap() >= 0)
        .collect();
    assert_eq!(file_maps.len(), 1, "{file_maps:?}");
    assert!(
        calls.iter().any(|c| c.file.is_some()),
        "the workload noted no file"
    );
    assert_eq!(
        file_maps[0]["file"]["name"],
        format!("mmap-workload-{pid}"),
        "{}",
        file_maps[0]
    );
    assert!(
        events
            .iter()
            .filter(|e| e["probe"] == "mmap" && e["fd"] == -1)
            .all(|e| e.get("file").is_none()),
        "anonymous mmaps carry no file"
    );
    assert_eq!(summary["lost_total"], 0, "{summary}");
    assert_eq!(summary["events_total"], events.len() as u64, "{summary}");
    assert!(
        summary["ended"]
            .as_str()
            .unwrap()
            .starts_with("command exited (status 0)")
    );

    // Without kernel BTF the calls are all there, and no event claims a file.
    let (run, text) = trace_workload(&["--btf", "/no/such/btf"], &[]);
    assert!(
        stderr(&run).contains("mmap events carry no file identity"),
        "{}",
        stderr(&run)
    );
    let records = json_lines(&text);
    let (events, _) = split_summary(&records);
    assert!(
        events.iter().all(|e| e.get("file").is_none()),
        "a file without BTF: {events:?}"
    );
    let mut calls = parse_calls(&stdout(&run));
    calls.iter_mut().for_each(|c| c.file = None);
    match_calls(&calls, events).unwrap();
}

/// The syscall probe sees every syscall number; an ia32 call numbered like mmap (9 is
/// link there) must not be reported, while the real munmap of the same address must.
#[test]
fn ia32_syscalls_are_not_taken_for_mmap_calls() {
    let _guard = shared();
    // With the kernel's BTF, and without (the documented fallback offset must be right).
    for tracer_args in [&[][..], &["--btf", "/no/such/btf"]] {
        let (run, text) = trace_workload(tracer_args, &["--ia32"]);
        if !tracer_args.is_empty() {
            assert!(
                stderr(&run).contains("assuming thread_info.status"),
                "{}",
                stderr(&run)
            );
        }
        let said = stdout(&run);
        let ia32: Vec<_> = said
            .lines()
            .filter(|l| l.starts_with("{\"ia32\""))
            .collect();
        assert_eq!(ia32.len(), 4, "the ia32 calls did not run: {said}");
        assert!(
            ia32.iter().all(|l| l.contains("\"ret\":-14")),
            "expected EFAULT: {ia32:?}"
        );
        let records = json_lines(&text);
        let (events, _) = split_summary(&records);
        let marked: Vec<_> = events
            .iter()
            .filter(|e| e["addr"] == "0x4d4d0000")
            .collect();
        assert_eq!(
            marked.len(),
            1,
            "{tracer_args:?}: expected only the x86-64 munmap: {marked:?}"
        );
        assert_eq!(marked[0]["probe"], "munmap", "{marked:?}");
    }
}

#[test]
fn table_output_is_aligned_and_decoded() {
    let _guard = shared();
    let out_file = std::env::temp_dir().join(format!("host-table-{}.txt", std::process::id()));
    let run = cli()
        .arg("trace")
        .arg("-o")
        .arg(&out_file)
        .arg("--")
        .arg(workload_path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let text = std::fs::read_to_string(&out_file).unwrap();
    let _ = std::fs::remove_file(&out_file);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains("TIME(s)") && header.contains("PROBE"),
        "{header}"
    );
    assert!(
        text.contains("prot=READ|WRITE flags=PRIVATE|ANONYMOUS"),
        "{text}"
    );
    assert!(
        text.contains("error=EINVAL"),
        "refused calls must show their errno: {text}"
    );
    assert!(text.contains("# summary:"), "{text}");
}

#[test]
fn comm_filter_traces_only_matching_processes() {
    let _guard = shared();
    let mut tracer = cli()
        .args([
            "trace",
            "--json",
            "--comm",
            "mmap-workload",
            "--duration",
            "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&mut tracer);
    let run = Command::new(workload_path()).output().unwrap();
    let _ = Command::new("/bin/true").status();
    let calls = parse_calls(&stdout(&run));
    let out = tracer.wait_with_output().unwrap();
    let records = json_lines(&stdout(&out));
    let (events, summary) = split_summary(&records);
    assert!(
        events.iter().all(|e| e["comm"] == "mmap-workload"),
        "other processes traced"
    );
    match_calls(&calls, events).unwrap();
    assert_eq!(summary["ended"], "duration elapsed");
}

#[test]
fn sigint_ends_with_whole_lines_and_a_summary() {
    let _guard = shared();
    for delay_ms in [0u64, 30, 200] {
        let mut tracer = cli()
            .args(["trace", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_ready(&mut tracer);
        // Keep events flowing while the signal lands.
        let mut load = Command::new(workload_path())
            .args(["--loop", "20000"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
        let out = tracer.wait_with_output().unwrap();
        load.wait().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let records = json_lines(&stdout(&out));
        let (_, summary) = split_summary(&records);
        assert_eq!(summary["ended"], "SIGINT");
    }
}

#[test]
fn pid_that_exits_ends_the_trace_cleanly() {
    let _guard = shared();
    let mut sleeper = Command::new("sleep").arg("1").spawn().unwrap();
    let out = cli()
        .args(["trace", "--json", "--pid", &sleeper.id().to_string()])
        .output()
        .unwrap();
    sleeper.wait().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the traced process exited"),
        "{}",
        stderr(&out)
    );
    let records = json_lines(&stdout(&out));
    let (_, summary) = split_summary(&records);
    assert_eq!(summary["ended"], "target process exited");
}

#[test]
fn mounts_tracefs_when_missing() {
    let _guard = shared();
    // Unmount every tracefs mount (it may be mounted more than once).
    while Command::new("umount")
        .arg("/sys/kernel/tracing")
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {}
    let out = cli().args(["trace", "--duration", "0.2"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::path::Path::new("/sys/kernel/tracing/events/syscalls").is_dir());
}

/// Each bad invocation gives one clear message and a non-zero exit, never a panic.
#[test]
fn errors_are_clear_messages() {
    // Some cases attach probes before they fail; not while another test unmounts tracefs.
    let _guard = shared();
    let cases: &[(&[&str], &str)] = &[
        (
            &["trace", "--pid", "999999999"],
            "no process with pid 999999999",
        ),
        (
            &["trace", "--", "/no/such/program"],
            "cannot run \"/no/such/program\"",
        ),
        (
            &["trace", "--probes", "mmap,bogus"],
            "unknown probe \"bogus\"",
        ),
        (&["trace", "--duration=-3"], "positive number of seconds"),
        (&["trace", "--ring-buffer-kib", "5"], "power of two"),
        (
            &["trace", "--pid", "1", "--comm", "x"],
            "cannot be used with",
        ),
        (
            &[
                "trace",
                "--output",
                "/no/such/dir/x.jsonl",
                "--duration",
                "0.1",
            ],
            "cannot create output file",
        ),
        (
            &["verify", "--probes", "mmap,munmap", "--", "/bin/true"],
            "needs the exec probe",
        ),
    ];
    for (args, expected) in cases {
        let out = cli().args(*args).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err:?}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn kernel_probes_are_refused_or_skipped_with_a_reason() {
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        // A kernel with kprobes: the guest tests cover the kernel probes.
        let out = cli()
            .args([
                "trace",
                "--probes",
                "mmap_region",
                "--btf",
                "/no/such/btf",
                "-d",
                "0.1",
            ])
            .output()
            .unwrap();
        assert!(
            stderr(&out).contains("cannot read kernel BTF from /no/such/btf"),
            "{}",
            stderr(&out)
        );
        return;
    }
    let out = cli()
        .args(["trace", "--probes", "mmap_region"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot trace mmap_region: this kernel has no kprobes"),
        "{}",
        stderr(&out)
    );
    let _guard = shared();
    let out = cli().args(["trace", "-d", "0.1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let skipped: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("kernel probes skipped"))
        .collect();
    assert_eq!(skipped.len(), 1, "one clear line: {err}");
    assert!(
        skipped[0].contains("mmap_region, remap_pfn_range, driver_mmap"),
        "{}",
        skipped[0]
    );
}

#[test]
fn refuses_to_run_without_root() {
    let out = cli()
        .args(["trace", "-d", "0.1"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
}

#[test]
fn help_explains_itself() {
    let out = cli().args(["trace", "--help"]).output().unwrap();
    let help = stdout(&out);
    for needle in [
        "--pid",
        "--comm",
        "--json",
        "--probes",
        "Examples:",
        "Ctrl-C",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
}

/// Issue #5 on the host: each scenario's shadow agrees with /proc/<pid>/maps after every
/// event (the kernel probes are absent here; the guest runs the same with them).
#[test]
fn verify_agrees_on_every_scenario() {
    let _guard = shared();
    for scenario in mmap_trace_tests::cli::SCENARIOS {
        let run = mmap_trace_tests::cli::verify_workload(&[], &["--scenario", scenario]);
        mmap_trace_tests::cli::assert_verified(&run, scenario);
        if *scenario == "file-pages" {
            // 4 shared pages + the private page that was read but not written.
            let checked = run.summary()["pfn_checks"].as_u64().unwrap();
            assert!(
                checked >= 5,
                "file-pages: {checked} PFNs compared with pagemap"
            );
        }
    }
    // The default sequence: brk, a file with an offset, failed calls…
    let run = mmap_trace_tests::cli::verify_workload(&[], &[]);
    mmap_trace_tests::cli::assert_verified(&run, "default sequence");
}

/// A doctored maps snapshot must be caught, named and fail the run.
#[test]
fn verify_reports_a_planted_mismatch() {
    let _guard = shared();
    let run =
        mmap_trace_tests::cli::verify_workload(&["--plant", "maps-perms"], &["--scenario", "anon"]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let mismatches = run.mismatches();
    assert!(!mismatches.is_empty(), "no mismatch record");
    let m = mismatches[0];
    assert_eq!(m["field"], "perms", "{m}");
    assert!(m["expected"].as_str().unwrap().starts_with("rw"), "{m}");
    assert!(m["found"].as_str().unwrap().starts_with("r-"), "{m}");
    assert!(
        run.stderr.contains("MISMATCH") && run.stderr.contains("FAIL"),
        "{}",
        run.stderr
    );
}

/// Builds C `source` and runs it under `verify --json`, without address-space
/// randomization when `fixed_layout`: the program's stdout and the records.
fn verify_c_program(
    name: &str,
    flags: &[&str],
    source: &str,
    fixed_layout: bool,
) -> (std::process::Output, Vec<serde_json::Value>) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = build_c(&dir, name, flags, source);
    let record = dir.join("verify.jsonl");
    let mut verify = cli();
    if fixed_layout {
        without_randomization(&mut verify);
    }
    let out = verify
        .args(["verify", "--json", "-o"])
        .arg(&record)
        .arg("--")
        .arg(&program)
        .output()
        .unwrap();
    let records = json_lines(&std::fs::read_to_string(&record).unwrap_or_default());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let summary = records.last().expect("a summary record");
    assert_eq!(summary["mismatches"], 0, "{}", stderr(&out));
    (out, records)
}

/// Without address-space randomization (`setarch -R`, gdb's default) a static binary's
/// heap starts right after its bss, and an mlock over both makes the kernel merge them
/// into one VMA that maps names `[heap]` as a whole; munlock of one page splits it again.
/// Verify must follow the name the kernel's VMA gives, not flag the bss as misnamed.
#[test]
fn verify_follows_the_heap_name_over_a_merged_bss() {
    let _guard = shared();
    let (out, records) = verify_c_program("heapmerge", &["-O2", "-static"], HEAP_MERGE_C, true);
    // The premise: the kernel did merge the bss into the heap's VMA at least once.
    let merged = stdout(&out);
    assert!(
        merged.contains("merged into the heap: ") && !merged.contains(": 0 of"),
        "the kernel never merged the bss into [heap]: {merged}"
    );
    let summary = records.last().unwrap();
    assert!(summary["checkpoints"].as_u64().unwrap() >= 6, "{summary}");
}

/// An mprotect of a page inside the main stack splits the `[stack]` VMA: maps names only
/// the piece holding the stack's start `[stack]`, the others are plain anonymous memory
/// until the kernel merges them back.
#[test]
fn verify_follows_the_stack_name_over_a_split_stack() {
    let _guard = shared();
    let (out, records) = verify_c_program("stacksplit", &["-O2"], STACK_SPLIT_C, false);
    assert_eq!(
        stdout(&out).trim(),
        "[stack] before 1, split 0, merged 1",
        "the premise: the page left [stack] and came back"
    );
    let summary = records.last().unwrap();
    assert!(summary["checkpoints"].as_u64().unwrap() >= 3, "{summary}");
}

/// A clone made with CLONE_UNTRACED (how LeakSanitizer makes the helper that ptraces its
/// process's threads at exit) cannot be followed by a tracer. The probes must not stop
/// it (nobody would resume it: its parent, spinning until it is done, would wait for
/// ever), its changes to the memory it shares are still checked at the parent's
/// checkpoints, and verify says why such a program may fail under it.
#[test]
fn verify_never_stops_a_clone_it_cannot_trace() {
    let _guard = shared();
    let dir = std::env::temp_dir().join(format!("untraced-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = build_c(&dir, "untraced", &["-O2"], UNTRACED_CLONE_C);
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut verify = cli()
        .args(["verify", "--"])
        .arg(&program)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = verify.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(60) {
            // SAFETY: kill(2) on the group made for this run.
            unsafe { libc::kill(-(verify.id() as i32), libc::SIGKILL) };
            let _ = verify.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.unwrap_or_else(|| panic!("verify hung for 60 s: {out}{err}"));
    assert!(status.success(), "{out}{err}");
    // The trace is on stdout, the command's own output on stderr.
    assert!(
        err.contains("helper done")
            && err.contains("with CLONE_UNTRACED, sharing its memory")
            && err.contains("not traced (made with CLONE_UNTRACED)")
            && err.contains("2 processes"),
        "{err}"
    );
}

/// Clones a helper with CLONE_VM | CLONE_UNTRACED that maps and unmaps, spins until it
/// is done, then reaps it.
const UNTRACED_CLONE_C: &str = r#"#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int done;

/* A change of the shared address space by a task verify cannot trace. */
static int helper(void *arg)
{
	void *p = mmap(0, 3 * 4096, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	(void)arg;
	if (p == MAP_FAILED)
		return 1;
	munmap(p, 4096);
	done = 1;
	return 0;
}

int main(void)
{
	size_t size = 256 * 1024;
	char *stack = mmap(0, size, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	int status;
	pid_t pid;

	if (stack == MAP_FAILED)
		return 2;
	pid = clone(helper, stack + size, CLONE_VM | CLONE_UNTRACED | SIGCHLD, 0);
	if (pid < 0)
		return 3;
	/* As LeakSanitizer's StopTheWorld does: spin until the helper is done. */
	while (!done)
		sched_yield();
	if (waitpid(pid, &status, __WALL) != pid || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		return 4;
	printf("helper done\n");
	return 0;
}
"#;

/// Reads maps to see the page below its frame in `[stack]`, split off by an mprotect,
/// then merged back.
const STACK_SPLIT_C: &str = r#"#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

/* The maps line of the VMA holding addr names [stack]. */
static int named_stack(unsigned long addr)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	unsigned long s, e;
	int stack = -1;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx", &s, &e) == 2 && s <= addr && addr < e)
			stack = strstr(line, "[stack]") != NULL;
	if (f)
		fclose(f);
	return stack;
}

int main(void)
{
	char frame[64 * 1024];
	unsigned long page;
	int before, split, merged;

	memset(frame, 1, sizeof(frame));
	page = (((unsigned long)frame + 4095) & ~4095UL) + 4096;
	before = named_stack(page);
	/* A page of the stack below this frame made read-only: the [stack] VMA splits. */
	if (mprotect((void *)page, 4096, PROT_READ))
		return 1;
	split = named_stack(page);
	if (mprotect((void *)page, 4096, PROT_READ | PROT_WRITE))
		return 2;
	merged = named_stack(page);
	printf("[stack] before %d, split %d, merged %d\n", before, split, merged);
	return frame[100] == 1 ? 0 : 3;
}
"#;

/// Maps the heap, then mlocks the four pages on each side of its start (and munlocks
/// them), then one page below it; says how often maps showed `[heap]` reaching below
/// the heap's start. Exit 6: no anonymous VMA right below the heap (randomization on).
const HEAP_MERGE_C: &str = r#"#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL
/*
 * Where maps shows the [heap] VMA start (0: no heap); *below: the size of the
 * anonymous VMA that ends there (0: none).
 */
static unsigned long heap_start(unsigned long *below)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	unsigned long s, e, prev_s = 0, prev_e = 0, found = 0;
	int prev_anon = 0;

	*below = 0;
	while (f && fgets(line, sizeof(line), f)) {
		int n = 0;

		if (sscanf(line, "%lx-%lx %*s %*s %*s %*s%n", &s, &e, &n) < 2)
			continue;
		if (strstr(line, "[heap]")) {
			found = s;
			if (prev_anon && prev_e == s)
				*below = prev_e - prev_s;
		}
		prev_anon = line[n + strspn(line + n, " ")] == '\n';
		prev_s = s;
		prev_e = e;
	}
	if (f)
		fclose(f);
	return found;
}

int main(void)
{
	unsigned long start;
	char *low;
	unsigned long below;
	int merged;

	if (sbrk(16 * PAGE) == (void *)-1)
		return 2;
	start = heap_start(&below);
	low = (char *)(start - 4 * PAGE);
	if (below < 4 * PAGE)
		return 6; /* no anonymous VMA (a bss) right below the heap */
	/* VM_LOCKED on both sides of the heap's start: one VMA, named [heap]. */
	if (mlock(low, 8 * PAGE))
		return 3;
	merged = heap_start(&below) < start;
	if (munlock(low, 8 * PAGE))
		return 4;
	merged += heap_start(&below) < start;
	/* Split again: the part below the heap's start is plain anonymous memory. */
	if (mlock(low, PAGE) || munlock(low, PAGE))
		return 5;
	printf("merged into the heap: %d of 2 checks\n", merged);
	return 0;
}
"#;

/// `voluntary_ctxt_switches` of a live process.
fn voluntary_switches(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches in /proc/PID/status")
}

/// `verify --json --pid PID`, started and ready; the rest of its stderr comes from the handle.
fn start_verify(pid: u32) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut verifier = cli()
        .args(["verify", "--json", "--pid", &pid.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rest_of_stderr = wait_ready(&mut verifier);
    (verifier, rest_of_stderr)
}

/// Attaching to a running process seeds the shadow from its maps.
#[test]
fn verify_attaches_to_a_running_process() {
    let _guard = shared();
    let mut busy = Command::new(workload_path())
        .args(["--loop", "100000000"])
        .spawn()
        .unwrap();
    let (verifier, _) = start_verify(busy.id());
    // Each checkpoint stops the target once, a voluntary context switch it makes
    // nowhere else in its loop: wait for plenty of them rather than for a fixed time.
    let switches = || voluntary_switches(busy.id());
    let (before, deadline) = (switches(), Instant::now() + Duration::from_secs(60));
    while switches() < before + 40 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(verifier.id() as i32, libc::SIGINT) };
    let out = verifier.wait_with_output().unwrap();
    busy.kill().unwrap();
    busy.wait().unwrap();
    let records = json_lines(&stdout(&out));
    let (_, summary) = split_summary(&records);
    assert!(out.status.success(), "{summary}");
    assert_eq!(summary["ended"], "SIGINT");
    assert_eq!(summary["mismatches"], 0, "{summary}");
    assert!(summary["checkpoints"].as_u64().unwrap() > 10, "{summary}");
}

/// A process that makes no traced call while verify runs gives no proof: not a pass.
#[test]
fn verify_with_nothing_checked_is_not_a_pass() {
    let _guard = shared();
    let mut idle = Command::new("sleep").arg("60").spawn().unwrap();
    // Attach only once it sleeps: its start-up (ld.so, malloc's brk) would otherwise be
    // the calls verify checks (a CI run saw one brk).
    let asleep = || {
        std::fs::read_to_string(format!("/proc/{}/syscall", idle.id()))
            .is_ok_and(|s| s.starts_with("230 ") || s.starts_with("35 "))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !asleep() {
        assert!(
            std::time::Instant::now() < deadline,
            "sleep 60 never reached nanosleep"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (verifier, rest_of_stderr) = start_verify(idle.id());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(verifier.id() as i32, libc::SIGINT) };
    let out = verifier.wait_with_output().unwrap();
    let err = rest_of_stderr.join().unwrap();
    idle.kill().unwrap();
    idle.wait().unwrap();
    let records = json_lines(&stdout(&out));
    let (_, summary) = split_summary(&records);
    assert_eq!(
        (
            summary["checkpoints"].as_u64(),
            summary["mismatches"].as_u64()
        ),
        (Some(0), Some(0)),
        "{summary}"
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("FAIL") && err.contains("nothing was checked"),
        "{err}"
    );
}

#[test]
fn verify_needs_one_process() {
    let out = cli().args(["verify"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--pid"), "{}", stderr(&out));
}

/// `--full` (every known page at every checkpoint) agrees too and checks at least the
/// pages the incremental checks do; a planted PFN error is caught by both.
#[test]
fn verify_full_page_checks_agree_with_incremental_ones() {
    let _guard = shared();
    let args = ["--scenario", "file-pages"];
    let incremental = mmap_trace_tests::cli::verify_workload(&[], &args);
    mmap_trace_tests::cli::assert_verified(&incremental, "file-pages");
    let full = mmap_trace_tests::cli::verify_workload(&["--full"], &args);
    mmap_trace_tests::cli::assert_verified(&full, "file-pages --full");
    let count =
        |run: &mmap_trace_tests::cli::VerifyRun, key: &str| run.summary()[key].as_u64().unwrap();
    let (i, f) = (
        count(&incremental, "pfn_checks"),
        count(&full, "pfn_checks"),
    );
    // Comparisons are not comparable between two runs: besides --full's passes, full
    // passes come on a clock (every 250 ms), so a slow incremental run compares a present
    // page again where a fast one did not (seen once: incremental 11, --full 5). What
    // each covered, the different pages compared, is.
    assert!(i >= 5 && f >= 5, "PFN checks: incremental {i}, --full {f}");
    // Reading only what calls touched covers every page the whole reads cover.
    assert_eq!(
        count(&incremental, "pfn_pages"),
        count(&full, "pfn_pages"),
        "different pages checked: incremental against --full"
    );
    assert_eq!(
        count(&full, "pfn_full_passes"),
        count(&full, "checkpoints"),
        "--full: every checkpoint a full pass"
    );
    let planted =
        mmap_trace_tests::cli::verify_workload(&["--full", "--plant", "pfn-off-by-one"], &args);
    assert_eq!(planted.status.code(), Some(1), "{}", planted.stderr);
    let pfn = planted
        .mismatches()
        .into_iter()
        .filter(|m| m["field"] == "pfn")
        .count();
    assert!(pfn >= 5, "--full: {pfn} PFN mismatches");
}

/// PFNs from page_cache events off by one must be caught against pagemap.
#[test]
fn verify_reports_planted_pfn_errors() {
    let _guard = shared();
    let run = mmap_trace_tests::cli::verify_workload(
        &["--plant", "pfn-off-by-one"],
        &["--scenario", "file-pages"],
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let pfn = run
        .mismatches()
        .into_iter()
        .filter(|m| m["field"] == "pfn")
        .count();
    assert!(pfn >= 5, "{pfn} PFN mismatches: {:?}", run.mismatches());
    assert!(run.stderr.contains("pagemap shows"), "{}", run.stderr);
}

/// Every record trace and verify write reads back into the schema's typed record and is
/// written back unchanged: syscall lines with their stacks (the hand-written hot path),
/// the catch-all's and exec's (serde's), faults and rss, both summaries, and verify's
/// process and mismatch records.
#[test]
fn every_record_reads_back_into_the_schema() {
    let _guard = shared();
    let (_, text) = trace_workload(&["--stacks", "--faults"], &[]);
    let counts = mmap_trace_tests::cli::assert_records_match_schema(&json_lines(&text));
    assert!(counts["event"] > 50 && counts["summary"] == 1, "{counts:?}");
    let run =
        mmap_trace_tests::cli::verify_workload(&["--plant", "maps-perms"], &["--scenario", "anon"]);
    let counts = mmap_trace_tests::cli::assert_records_match_schema(&run.records);
    assert!(
        counts.get("mismatch") > Some(&0) && counts.get("process") > Some(&0),
        "{counts:?}"
    );
}

/// The bench's least-record floor (`mmap-trace-floor --records`) records each of the traced
/// process's mmap/munmap calls and nothing of others': its figure is the cost of real
/// records, not of an empty program.
#[test]
fn floor_records_every_call_of_its_pid() {
    use std::io::Write as _;
    let _guard = shared();
    const LOOPS: u64 = 20_000;
    // Held until the floor is attached: sh waits for a line, then execs the workload
    // (same pid).
    let mut held = Command::new("sh")
        .args(["-c", r#"read _ && exec "$0" "$@""#])
        .arg(workload_path())
        .args(["--loop", &LOOPS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut floor = mmap_trace_tests::cli::floor()
        .args(["--records", "--pid", &held.id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = wait_ready(&mut floor);
    // Another process making the same calls at the same time: none of its must count.
    let mut other = Command::new(workload_path())
        .args(["--loop", &LOOPS.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    held.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(held.wait().unwrap().success());
    assert!(other.wait().unwrap().success());
    let status = floor.wait().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("mmap-trace-floor: floor: "))
        .unwrap_or_else(|| panic!("no count in:\n{stderr}"));
    let records: u64 = line.split(' ').next().unwrap().parse().unwrap();
    assert!(line.ends_with(", 0 lost"), "{line}");
    // Two calls a loop, plus the static workload's few of its own (brk, its stack guard…).
    assert!(
        (2 * LOOPS..2 * LOOPS + 64).contains(&records),
        "{records} records for {} calls: {line}",
        2 * LOOPS
    );
}
