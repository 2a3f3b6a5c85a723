//! Running the mmap-trace CLI and the workload from tests. The binaries' paths come from
//! the environment `cargo xtask test` (and the guest's init) sets.

use std::{
    ffi::OsStr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

use serde_json::Value;

fn from_env(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => panic!("{var} is not set: run the tests through `cargo xtask test`"),
    }
}

/// The static mmap-trace CLI under test.
pub fn cli() -> Command {
    Command::new(from_env("MMTRACE_CLI"))
}

pub fn workload_path() -> PathBuf {
    from_env("MMTRACE_WORKLOAD")
}

/// The bench's floor (mmap-trace-floor/), a binary of its own.
pub fn floor() -> Command {
    Command::new(from_env("MMTRACE_FLOOR"))
}

/// Builds C `source` with `gcc <flags>` into `dir/name`.
pub fn build_c(dir: &Path, name: &str, flags: &[&str], source: &str) -> PathBuf {
    let file = dir.join(format!("{name}.c"));
    std::fs::write(&file, source).unwrap();
    let program = dir.join(name);
    let run = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&program)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("this test needs gcc to build its C program: {e}"));
    assert!(run.status.success(), "gcc failed: {}", stderr(&run));
    program
}

/// `cmd` starts without address-space randomization (`ADDR_NO_RANDOMIZE`, what
/// `setarch -R` and gdb set), which its children and the programs they exec keep: a
/// command verify starts gets it through verify.
pub fn without_randomization(cmd: &mut Command) -> &mut Command {
    // SAFETY: personality(2) only sets this process's execution domain flags; it is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            // 0xffffffff asks for the current persona without changing it.
            let current = libc::personality(0xffff_ffff);
            let fixed = current as libc::c_ulong | libc::ADDR_NO_RANDOMIZE as libc::c_ulong;
            if current == -1 || libc::personality(fixed) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every line of a JSON Lines trace, parsed; panics naming the first bad line.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {l:?}", i + 1))
        })
        .collect()
}

/// Every record of a JSON trace read into mmap-trace's typed record for its type
/// (`mmap_trace::schema`) and written back: the same JSON, so the writers (the
/// hand-written hot path included) write nothing the schema does not hold. Returns the
/// count of each type.
pub fn assert_records_match_schema(records: &[Value]) -> std::collections::BTreeMap<String, usize> {
    use mmap_trace::schema::{
        CheckRecord, DriverSummaryRecord, EventRecord, MismatchRecord, ProcessRecord, Record,
        SummaryRecord, Tagged, UnmodelledRecord,
    };
    use serde::Deserialize as _;
    fn back<'a, T: Record + serde::Deserialize<'a>>(value: &'a Value) -> String {
        let record = T::deserialize(value).unwrap_or_else(|e| panic!("{e}: {value}"));
        serde_json::to_string(&Tagged::new(&record)).unwrap()
    }
    let mut counts = std::collections::BTreeMap::new();
    for value in records {
        let kind = value["type"].as_str().unwrap_or_default();
        let written = match kind {
            EventRecord::TYPE => {
                let record = EventRecord::deserialize(value).unwrap();
                assert_ne!(
                    record.body,
                    mmap_trace::schema::Body::Unknown,
                    "a probe the schema does not know: {value}"
                );
                back::<EventRecord<'_>>(value)
            }
            SummaryRecord::TYPE if value.get("checks").is_some() => {
                back::<DriverSummaryRecord>(value)
            }
            SummaryRecord::TYPE => back::<SummaryRecord>(value),
            MismatchRecord::TYPE => back::<MismatchRecord<'_>>(value),
            ProcessRecord::TYPE => back::<ProcessRecord<'_>>(value),
            UnmodelledRecord::TYPE => back::<UnmodelledRecord<'_>>(value),
            CheckRecord::TYPE => back::<CheckRecord>(value),
            other => panic!("a record type the schema does not know: {other:?}: {value}"),
        };
        assert_eq!(written, value.to_string(), "written back differently");
        *counts.entry(kind.to_owned()).or_default() += 1;
    }
    counts
}

/// Events and the closing summary of a JSON trace; panics unless the summary is last.
/// verify's per-process records stand between the events and the summary.
/// `mmap-trace trace --json FLAGS -o FILE -- argv…` with `env` set, which must succeed
/// with no event lost and no record malformed: the command's stdout and the trace's
/// event records.
pub fn trace_command(
    flags: &[&str],
    env: &[(&str, String)],
    argv: &[&OsStr],
) -> (String, Vec<Value>) {
    // One file per run: tests of one binary run on several threads.
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let out_file = std::env::temp_dir().join(format!(
        "trace-{}-{}.jsonl",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let run = cli()
        .args(["trace", "--json"])
        .args(flags)
        .arg("-o")
        .arg(&out_file)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--")
        .args(argv)
        .output()
        .expect("run mmap-trace");
    assert!(
        run.status.success(),
        "mmap-trace trace {flags:?} failed: {}",
        stderr(&run)
    );
    let text = std::fs::read_to_string(&out_file).expect("trace file");
    let _ = std::fs::remove_file(&out_file);
    let records = json_lines(&text);
    let (events, summary) = split_summary(&records);
    assert_eq!(summary["lost_total"], 0, "{summary}");
    assert_eq!(summary["malformed"], 0, "{summary}");
    (stdout(&run), events.to_vec())
}

pub fn split_summary(records: &[Value]) -> (&[Value], &Value) {
    let (summary, rest) = records
        .split_last()
        .expect("an empty trace: not even a summary");
    assert_eq!(
        summary["type"], "summary",
        "the last record is not the summary: {summary}"
    );
    let processes = rest
        .iter()
        .rev()
        .take_while(|r| r["type"] == "process")
        .count();
    let events = &rest[..rest.len() - processes];
    assert!(
        events.iter().all(|e| e["type"] == "event"),
        "a non-event record before the summary"
    );
    (events, summary)
}

/// verify's per-process records (one per checked process, before the summary).
pub fn process_records(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "process").collect()
}

/// The scenarios `mmap-workload --scenario` knows (see its source).
pub const SCENARIOS: &[&str] = &[
    "anon",
    "file-offset",
    "file-pages",
    "split3",
    "hole",
    "mremap-move",
    "fixed",
    "threads",
];

/// The workload's scenarios for issues 12 and 19: every one `src/scenarios.rs` knows.
pub use crate::scenarios::SCENARIOS as TRUTH_SCENARIOS;

/// Scenarios whose point is that verify changes nothing the program can see: under
/// verify they must observe exactly what they observe alone.
pub const INVISIBLE: &[&str] = &[
    "sigcont-handler",
    "blocked-read",
    "waitpid-stop",
    "pidfd-reap",
    "signal-mask",
];

/// For an [`INVISIBLE`] scenario: its observations under `run` equal a run alone.
pub fn assert_unperturbed(scenario: &str, run: &VerifyRun) {
    let observations = |stdout: &str| -> Vec<(String, Value)> {
        crate::workload::parse_observations(stdout)
            .into_iter()
            .map(|o| (o.observe, o.value))
            .collect()
    };
    let alone = Command::new(workload_path())
        .args(["--scenario", scenario])
        .output()
        .unwrap();
    assert!(alone.status.success(), "{scenario} alone failed");
    assert_eq!(
        observations(&run.workload_stdout),
        observations(&String::from_utf8_lossy(&alone.stdout)),
        "{scenario}: the program saw something else under verify"
    );
}

/// How many processes verify checks in a scenario (it follows forks).
pub fn processes_of(scenario: &str) -> usize {
    match scenario {
        "fork-exec" => 3,
        "madvise-fork" | "waitpid-stop" => 2,
        "pidfd-reap" => 4,
        _ => 1,
    }
}

/// Threads racing on shared addresses (`storm-N`): `runs` verify runs of `threads`
/// threads each, every one with 0 mismatches and 0 lost, in every run.
pub fn assert_storms_verify(threads: u32, runs: u32) {
    for run in 1..=runs {
        let scenario = format!("storm-{threads}");
        let result = verify_workload(&[], &["--scenario", &scenario]);
        assert_verified(&result, &format!("{scenario}, run {run} of {runs}"));
    }
}

/// A finished `mmap-trace verify --json` run.
pub struct VerifyRun {
    pub status: std::process::ExitStatus,
    pub records: Vec<Value>,
    pub stderr: String,
    /// The workload's own account of its calls (its stdout).
    pub workload_stdout: String,
}

impl VerifyRun {
    pub fn summary(&self) -> &Value {
        self.records.last().expect("a summary record")
    }

    pub fn mismatches(&self) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["type"] == "mismatch")
            .collect()
    }
}

/// Runs `mmap-trace verify --json <extra> -- mmap-workload <workload_args>`.
pub fn verify_workload(extra: &[&str], workload_args: &[&str]) -> VerifyRun {
    verify_workload_in(&std::env::temp_dir(), extra, workload_args)
}

/// The same, with the workload's temp files in `tmpdir` (its TMPDIR).
pub fn verify_workload_in(
    tmpdir: &std::path::Path,
    extra: &[&str],
    workload_args: &[&str],
) -> VerifyRun {
    // Unique per call: tests of one binary run in parallel, some with the same arguments.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let out_file = std::env::temp_dir().join(format!(
        "verify-{}-{}-{}.jsonl",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        workload_args.join("_").replace('/', "_")
    ));
    let out = cli()
        .args(["verify", "--json", "-o"])
        .arg(&out_file)
        .args(extra)
        .arg("--")
        .arg(workload_path())
        .args(workload_args)
        .env("TMPDIR", tmpdir)
        .output()
        .expect("run mmap-trace verify");
    let text = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    VerifyRun {
        status: out.status,
        records: json_lines(&text),
        stderr: stderr(&out),
        workload_stdout: stdout(&out),
    }
}

/// Asserts that verify agreed with the kernel at a checkpoint after every workload call.
pub fn assert_verified(run: &VerifyRun, what: &str) {
    let summary = run.summary();
    assert_eq!(summary["type"], "summary", "{what}: {summary}");
    assert!(
        run.status.success() && summary["mismatches"] == 0 && summary["lost_total"] == 0,
        "{what}: verify disagreed (exit {:?}):\n{}\nmismatches: {:?}",
        run.status.code(),
        run.stderr,
        run.mismatches()
    );
    let calls = run.workload_stdout.lines().count() as u64;
    let checkpoints = summary["checkpoints"].as_u64().unwrap_or(0);
    assert!(
        checkpoints > calls,
        "{what}: {checkpoints} checkpoints for {calls} calls: {summary}"
    );
}
