//! Where events go: an aligned table for people or JSON Lines for programs. Whole lines
//! only: records are formatted into a buffer and written line by line, so a signal can
//! never leave half a record behind.

use std::io::{self, BufWriter, Write};

use mmap_trace_common::{PROBE_COUNT, Probe};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    decode::{Event, FilePath},
    json,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// What `verify` counted.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct VerifyStats {
    pub checkpoints: u64,
    pub mismatches: u64,
    /// Present file pages whose PFN was compared with pagemap.
    pub pfn_checks: u64,
}

/// What a finished trace reports.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: [u64; PROBE_COUNT],
    pub lost: [u64; PROBE_COUNT],
    /// Records the decoder refused (never expected; counted, not hidden).
    pub malformed: u64,
    pub duration_ns: u64,
    pub ended: String,
    pub attached: Vec<Probe>,
    pub verify: Option<VerifyStats>,
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    #[serde(rename = "type")]
    record_type: &'static str,
    events: Map<String, Value>,
    lost: Map<String, Value>,
    events_total: u64,
    lost_total: u64,
    malformed: u64,
    duration_s: f64,
    ended: &'a str,
    probes: Vec<&'static str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    verify: Option<VerifyStats>,
}

/// The file to write records to, or standard output.
pub fn open(path: Option<&std::path::Path>) -> anyhow::Result<Box<dyn Write + Send>> {
    use anyhow::Context as _;
    Ok(match path {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create output file {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    })
}

pub struct Output {
    format: Format,
    out: BufWriter<Box<dyn Write + Send>>,
    /// CLOCK_MONOTONIC ns at attach; table times are relative to it.
    start_ns: u64,
    header_done: bool,
    pub counts: [u64; PROBE_COUNT],
    /// The JSON line being written (reused: no allocation per event).
    line: Vec<u8>,
}

impl Output {
    pub fn new(format: Format, out: Box<dyn Write + Send>, start_ns: u64) -> Self {
        Self {
            format,
            out: BufWriter::with_capacity(256 * 1024, out),
            start_ns,
            header_done: false,
            counts: [0; PROBE_COUNT],
            line: Vec::with_capacity(512),
        }
    }

    pub fn event(&mut self, event: &Event, path: Option<FilePath>) -> io::Result<()> {
        self.counts[event.probe() as usize] += 1;
        if let (Format::Json, Some(e)) = (self.format, event.syscall()) {
            // The hot path: one line per traced call, into a buffer reused for every line.
            self.line.clear();
            json::write_syscall(&mut self.line, e, event.probe(), event.mmap_file(), path.as_ref());
            self.line.push(b'\n');
            return self.out.write_all(&self.line);
        }
        let record = json::record(event, path);
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, &record)?;
                self.out.write_all(b"\n")
            }
            Format::Table => {
                if !self.header_done {
                    self.header_done = true;
                    writeln!(
                        self.out,
                        "{:>12} {:>7} {:>7} {:<16} {:<15} DETAILS",
                        "TIME(s)", "PID", "TID", "COMM", "PROBE"
                    )?;
                }
                let since = record.ts_ns.saturating_sub(self.start_ns) as f64 / 1e9;
                let details = details(&record.body);
                let comm = escape(json::c_bytes(&event.header().comm));
                writeln!(
                    self.out,
                    "{since:>12.6} {:>7} {:>7} {comm:<16} {:<15} {details}",
                    record.pid, record.tid, record.probe
                )
            }
        }
    }

    /// Any other record (a verify mismatch): a JSON line, or a `#` line in the table.
    pub fn record<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        if self.format == Format::Table {
            self.out.write_all(b"# ")?;
        }
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }

    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        let per_probe = |values: &[u64; PROBE_COUNT]| -> Map<String, Value> {
            s.attached
                .iter()
                .map(|p| (p.name().to_string(), Value::from(values[*p as usize])))
                .collect()
        };
        let events_total = s.events.iter().sum();
        let lost_total = s.lost.iter().sum();
        match self.format {
            Format::Json => {
                let summary = JsonSummary {
                    record_type: "summary",
                    events: per_probe(&s.events),
                    lost: per_probe(&s.lost),
                    events_total,
                    lost_total,
                    malformed: s.malformed,
                    duration_s: s.duration_ns as f64 / 1e9,
                    ended: &s.ended,
                    probes: s.attached.iter().map(|p| p.name()).collect(),
                    verify: s.verify,
                };
                serde_json::to_writer(&mut self.out, &summary)?;
                self.out.write_all(b"\n")
            }
            Format::Table => {
                writeln!(
                    self.out,
                    "# summary: {events_total} events, {lost_total} lost, {:.3} s, ended: {}",
                    s.duration_ns as f64 / 1e9,
                    s.ended
                )?;
                for p in &s.attached {
                    writeln!(
                        self.out,
                        "#   {:<16} {:>10} events {:>8} lost",
                        p.name(),
                        s.events[*p as usize],
                        s.lost[*p as usize]
                    )?;
                }
                if let Some(v) = s.verify {
                    writeln!(
                        self.out,
                        "# verify: {} checkpoints, {} mismatches, {} page PFNs checked",
                        v.checkpoints, v.mismatches, v.pfn_checks
                    )?;
                }
                if s.malformed > 0 {
                    writeln!(self.out, "#   malformed records: {}", s.malformed)?;
                }
                Ok(())
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `key=value …` from the JSON body, so the table shows exactly what JSON carries.
fn details(body: &json::Body) -> String {
    let mut parts = Vec::new();
    if let Ok(Value::Object(map)) = serde_json::to_value(body) {
        flatten("", &map, &mut parts);
    }
    parts.join(" ")
}

fn flatten(prefix: &str, map: &Map<String, Value>, parts: &mut Vec<String>) {
    for (key, value) in map {
        // Raw flag words repeat the decoded names; `X_hex` is shown as X's value.
        if key.ends_with("_raw") || key.ends_with("_hex") {
            continue;
        }
        let exact = map.get(&format!("{key}_hex")).and_then(Value::as_str).and_then(unhex);
        match value {
            Value::Object(inner) => flatten(&format!("{prefix}{key}."), inner, parts),
            Value::String(s) => {
                let text = escape(exact.as_deref().unwrap_or(s.as_bytes()));
                parts.push(format!("{prefix}{key}={text}"));
            }
            other => parts.push(format!("{prefix}{key}={other}")),
        }
    }
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// Bytes for one table cell, as the kernel's maps escapes a path (`\012` for a newline):
/// control characters, space, backslash and bytes that are not UTF-8 as `\ooo`, so a
/// name can neither break the line nor the `key=value` columns.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let octal = |out: &mut String, b: u8| out.push_str(&format!("\\{b:03o}"));
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == ' ' || c == '\\' {
                let mut buf = [0; 4];
                c.encode_utf8(&mut buf).bytes().for_each(|b| octal(&mut out, b));
            } else {
                out.push(c);
            }
        }
        chunk.invalid().iter().for_each(|&b| octal(&mut out, b));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn table_cells_escape_like_the_kernel() {
        assert_eq!(escape(b"/tmp/new\nline"), "/tmp/new\\012line");
        assert_eq!(escape(b"a b\tc\\d"), "a\\040b\\011c\\134d");
        assert_eq!(escape(b"\xff\xfe-bin"), "\\377\\376-bin");
        assert_eq!(escape("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(escape(b"[heap]"), "[heap]");
    }
}
