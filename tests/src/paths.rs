//! Helpers of the path tests (host_paths, guest_paths): a JSON trace of a command, and
//! the exact bytes of the paths it carries.

use std::ffi::OsStr;

use serde_json::Value;

use crate::{
    cli::{trace_command, workload_path},
    workload::{parse_calls, parse_observations},
};

pub fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `mmap-trace trace --json -o FILE -- argv…`, which must succeed with no event lost:
/// the command's stdout and the trace's event records.
pub fn trace_json(argv: &[&OsStr]) -> (String, Vec<Value>) {
    trace_command(&[], &[], argv)
}

/// The exact bytes of a record's `path` (its `path_hex` where it has one).
pub fn path_bytes(record: &Value) -> Option<Vec<u8>> {
    match record["path_hex"].as_str() {
        Some(hex) => Some(unhex(hex)),
        None => record["path"].as_str().map(|p| p.as_bytes().to_vec()),
    }
}

/// The mmap events that mapped a file.
pub fn file_mmaps(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["probe"] == "mmap" && e["file"].is_object())
        .collect()
}

/// Traces `mmap-workload --scenario SCENARIO`: the traced mmap of the file the workload
/// reported (by inode), the path the workload printed (`path_hex`), and all events.
pub fn scenario_mapping(scenario: &str) -> (Value, Vec<u8>, Vec<Value>) {
    let workload = workload_path();
    let argv = [
        workload.as_os_str(),
        OsStr::new("--scenario"),
        OsStr::new(scenario),
    ];
    let (out, events) = trace_json(&argv);
    let expected = parse_observations(&out)
        .iter()
        .find(|o| o.observe == "path_hex")
        .map(|o| unhex(o.value.as_str().expect("hex string")))
        .unwrap_or_else(|| panic!("{scenario}: the workload printed no path: {out}"));
    let ino = parse_calls(&out)
        .into_iter()
        .find_map(|c| c.file.map(|f| f.ino))
        .unwrap_or_else(|| panic!("{scenario}: the workload mapped no file: {out}"));
    let event = file_mmaps(&events)
        .into_iter()
        .find(|e| e["file"]["ino"] == ino)
        .unwrap_or_else(|| panic!("{scenario}: no traced mmap of inode {ino}"))
        .clone();
    (event, expected, events)
}
