//! The account `mmap-workload` prints of the calls it made, and matching it against a
//! trace.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One syscall as the workload made it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Call {
    pub call: String,
    pub args: Vec<u64>,
    pub ret: i64,
    /// For an mmap of an fd: the file as fstat(2) saw it before the call (the trace's
    /// `file` must agree). Absent where the workload did not record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileKey>,
}

/// A file's identity as /proc/<pid>/maps writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileKey {
    /// `major:minor` in hex.
    pub dev: String,
    pub ino: u64,
}

impl Call {
    /// Same call, arguments and result; and the same file where the workload noted one.
    pub fn matches(&self, traced: &Call) -> bool {
        self.call == traced.call
            && self.args == traced.args
            && self.ret == traced.ret
            && (self.file.is_none() || self.file == traced.file)
    }
}

/// Something the workload did or saw besides a traced call (a signal handler's count,
/// what read() returned, a syscall the probes do not trace, its own maps lines…): the
/// program's own account, which must read the same with and without a tracer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Observation {
    pub observe: String,
    pub value: Value,
}

/// The workload's traced calls, in order (observation lines skipped).
pub fn parse_calls(stdout: &str) -> Vec<Call> {
    stdout
        .lines()
        .filter(|l| !is_observation(l))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("workload line {l:?}: {e}")))
        .collect()
}

/// The workload's observations, in order.
pub fn parse_observations(stdout: &str) -> Vec<Observation> {
    stdout
        .lines()
        .filter(|l| is_observation(l))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("workload line {l:?}: {e}")))
        .collect()
}

fn is_observation(line: &str) -> bool {
    line.starts_with(r#"{"observe":"#)
}

fn hex(v: &Value, key: &str) -> Option<u64> {
    let s = v.get(key)?.as_str()?;
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// The arguments and result a trace event shows for a call, in the workload's terms.
pub fn event_as_call(event: &Value) -> Option<Call> {
    let probe = event.get("probe")?.as_str()?;
    let int = |key: &str| event.get(key).and_then(Value::as_i64);
    // Address-returning calls carry ret_addr on success, ret (negative) on failure.
    let ret = match (hex(event, "ret_addr"), int("ret")) {
        (Some(addr), _) => addr as i64,
        (None, Some(ret)) => ret,
        _ => return None,
    };
    let args = match probe {
        "mmap" => vec![
            hex(event, "addr")?,
            hex(event, "len")?,
            event.get("prot_raw")?.as_u64()?,
            event.get("flags_raw")?.as_u64()?,
            int("fd")? as u64,
            hex(event, "offset")?,
        ],
        "munmap" => vec![hex(event, "addr")?, hex(event, "len")?],
        "mprotect" => vec![
            hex(event, "addr")?,
            hex(event, "len")?,
            event.get("prot_raw")?.as_u64()?,
        ],
        "mremap" => vec![
            hex(event, "old_addr")?,
            hex(event, "old_len")?,
            hex(event, "new_len")?,
            event.get("flags_raw")?.as_u64()?,
            hex(event, "new_addr")?,
        ],
        "brk" => vec![hex(event, "addr")?],
        _ => return None,
    };
    let file = event.get("file").and_then(|f| {
        Some(FileKey {
            dev: f.get("dev")?.as_str()?.to_string(),
            ino: f.get("ino")?.as_u64()?,
        })
    });
    Some(Call {
        call: probe.to_string(),
        args,
        ret,
        file,
    })
}

/// Checks that `calls` appear, in order and with equal values, among `events` (other
/// events, e.g. the runtime's own start-up mappings, may sit between them). Returns a
/// description of the first call not found.
pub fn match_calls(calls: &[Call], events: &[Value]) -> Result<(), String> {
    let traced: Vec<Call> = events.iter().filter_map(event_as_call).collect();
    let mut next = 0;
    for call in calls {
        match traced[next..].iter().position(|t| call.matches(t)) {
            Some(i) => next += i + 1,
            None => {
                let same_kind: Vec<&Call> = traced.iter().filter(|t| t.call == call.call).collect();
                return Err(format!(
                    "call {call:?} not found in the trace (after position {next}); \
                     traced {} calls, those of this kind: {same_kind:?}",
                    traced.len()
                ));
            }
        }
    }
    Ok(())
}
