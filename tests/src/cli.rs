//! Running the mmap-trace CLI and the workload from tests. The binaries' paths come from
//! the environment `cargo xtask test` (and the guest's init) sets.

use std::{
    path::PathBuf,
    process::{Command, Output},
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
            serde_json::from_str(l).unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {l:?}", i + 1))
        })
        .collect()
}

/// Events and the closing summary of a JSON trace; panics unless the summary is last.
pub fn split_summary(records: &[Value]) -> (&[Value], &Value) {
    let (summary, events) = records.split_last().expect("an empty trace: not even a summary");
    assert_eq!(summary["type"], "summary", "the last record is not the summary: {summary}");
    assert!(
        events.iter().all(|e| e["type"] == "event"),
        "a non-event record before the summary"
    );
    (events, summary)
}
