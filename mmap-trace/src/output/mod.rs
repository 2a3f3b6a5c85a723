//! Where events go: an aligned table for people or JSON Lines for programs. Whole lines
//! only: records are formatted into a buffer and written line by line, so a signal can
//! never leave half a record behind.

pub mod flags;
pub mod json;
pub mod paths;

use std::io::{self, BufWriter, Write};

use mmap_trace_common::{PROBE_COUNT, Probe};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    kernel::decode::{Event, FilePath},
    stacks::{Frame, NamedStack},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// What `verify` counted.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct VerifyStats {
    /// Processes checked (the summary's total; absent from a process's own record).
    #[serde(skip_serializing_if = "is_zero")]
    pub processes: u64,
    pub checkpoints: u64,
    pub mismatches: u64,
    /// Checkpoints where a change the shadow does not model (named by the catch-all) was
    /// adopted from the kernel's view.
    pub unmodelled: u64,
    /// Failed calls that had changed part of their ranges (adopted, `partial` records).
    #[serde(skip_serializing_if = "is_zero")]
    pub partial: u64,
    /// Present file pages whose PFN was compared with pagemap.
    pub pfn_checks: u64,
    /// Checkpoints whose page check compared every known page (the rest compared only
    /// the pages that could have changed: see verify/pages.rs).
    pub pfn_full_passes: u64,
    /// pread calls on /proc/<pid>/pagemap, and the entries they read.
    pub pagemap_reads: u64,
    pub pagemap_entries: u64,
    /// Checkpoints that read /proc/<pid>/maps whole; the others asked the kernel only
    /// about the ranges their calls touched (`PROCMAP_QUERY`), this many VMAs in all.
    pub maps_whole_reads: u64,
    pub maps_queried_vmas: u64,
}

impl VerifyStats {
    pub fn add_page_checks(&mut self, pages: &crate::verify::PageStats) {
        self.pfn_checks += pages.checked;
        self.pfn_full_passes += pages.full_passes;
        self.pagemap_reads += pages.reads;
        self.pagemap_entries += pages.entries;
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl VerifyStats {
    pub fn add(&mut self, other: &VerifyStats) {
        self.checkpoints += other.checkpoints;
        self.mismatches += other.mismatches;
        self.unmodelled += other.unmodelled;
        self.partial += other.partial;
        self.pfn_checks += other.pfn_checks;
        self.pfn_full_passes += other.pfn_full_passes;
        self.pagemap_reads += other.pagemap_reads;
        self.pagemap_entries += other.pagemap_entries;
        self.maps_whole_reads += other.maps_whole_reads;
        self.maps_queried_vmas += other.maps_queried_vmas;
    }
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
    /// `trace --faults`: faults per mapping and resident memory per process.
    pub faults: Option<crate::faults::Faults>,
}

/// A mapping's faults in the JSON summary (`faults_by_mapping`).
#[derive(Serialize)]
struct JsonMappingFaults {
    pid: u32,
    start: json::Hex,
    end: json::Hex,
    perms: String,
    name: String,
    faults: u64,
    writes: u64,
    present: u64,
    major: u64,
    first_ns: u64,
}

/// A process's resident memory of one type in the JSON summary (`resident`).
#[derive(Serialize)]
struct JsonResident {
    pid: u32,
    member: &'static str,
    first_bytes: i64,
    last_bytes: i64,
    peak_bytes: i64,
}

/// Mappings the table's summary lists (JSON lists them all).
const TABLE_TOP_MAPPINGS: usize = 10;

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
    #[serde(skip_serializing_if = "Option::is_none")]
    faults_by_mapping: Option<Vec<JsonMappingFaults>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    faults_unattributed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resident: Option<Vec<JsonResident>>,
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
    /// `trace -T`: CLOCK_REALTIME − CLOCK_MONOTONIC (ns), to print table times as the
    /// wall-clock time of day.
    wall_clock: Option<i64>,
    /// JSON only: names the cgroup id of each event.
    cgroups: Option<crate::process::cgroup::Names>,
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
            wall_clock: None,
            cgroups: (format == Format::Json).then(crate::process::cgroup::Names::new),
            header_done: false,
            counts: [0; PROBE_COUNT],
            line: Vec::with_capacity(512),
        }
    }

    /// Table times as the wall-clock time of day (`trace -T`), from now on.
    pub fn wall_clock(&mut self) {
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        self.wall_clock = Some(realtime as i64 - clock_ns(libc::CLOCK_MONOTONIC) as i64);
    }

    pub fn event(&mut self, event: &Event, path: Option<FilePath>) -> io::Result<()> {
        self.event_stacked(event, path, None)
    }

    /// An event with the user stack `trace --stacks` unwound for it: JSON's `stack`
    /// array; in the table, the innermost frame outside libc after the details and the
    /// whole stack indented below.
    pub fn event_stacked(
        &mut self,
        event: &Event,
        path: Option<FilePath>,
        stack: Option<&NamedStack>,
    ) -> io::Result<()> {
        self.counts[event.probe() as usize] += 1;
        let cgroup_id = event.header().cgroup_id;
        let cgroup = self
            .cgroups
            .as_mut()
            .and_then(|names| names.name(cgroup_id));
        if let (Format::Json, Some(e)) = (self.format, event.syscall()) {
            // The hot path: one line per traced call, into a buffer reused for every line.
            self.line.clear();
            json::write_syscall(
                &mut self.line,
                e,
                event.probe(),
                event.mmap_file(),
                path.as_ref(),
            );
            append_stack(&mut self.line, stack)?;
            json::append_cgroup(&mut self.line, cgroup_id, cgroup);
            self.line.push(b'\n');
            return self.out.write_all(&self.line);
        }
        let cgroup = cgroup.map(str::to_owned);
        let mut record = json::record(event, path);
        match self.format {
            Format::Json => {
                record.cgroup = cgroup;
                self.line.clear();
                serde_json::to_writer(&mut self.line, &record)?;
                append_stack(&mut self.line, stack)?;
                self.line.push(b'\n');
                self.out.write_all(&self.line)
            }
            Format::Table => {
                // `12.345678` (seconds since attach) or `HH:MM:SS.ffffff`.
                let width = if self.wall_clock.is_some() { 15 } else { 12 };
                if !self.header_done {
                    self.header_done = true;
                    let time = if self.wall_clock.is_some() {
                        "TIME"
                    } else {
                        "TIME(s)"
                    };
                    writeln!(
                        self.out,
                        "{time:>width$} {:>7} {:>7} {:<16} {:<15} DETAILS",
                        "PID", "TID", "COMM", "PROBE"
                    )?;
                }
                let time = match self.wall_clock {
                    Some(offset) => time_of_day(record.ts_ns as i64 + offset),
                    None => {
                        format!(
                            "{:.6}",
                            record.ts_ns.saturating_sub(self.start_ns) as f64 / 1e9
                        )
                    }
                };
                let details = details(&record.body);
                let comm = escape(json::c_bytes(&event.header().comm));
                let frames = stack.map_or(&[][..], |s| &s.frames[..]);
                let caller = frames
                    .iter()
                    .find(|f| !f.in_libc())
                    .map(|f| format!("  <- {}", frame_text(f)))
                    .unwrap_or_default();
                writeln!(
                    self.out,
                    "{time:>width$} {:>7} {:>7} {comm:<16} {:<15} {details}{caller}",
                    record.pid, record.tid, record.probe
                )?;
                for (i, frame) in frames.iter().enumerate() {
                    writeln!(self.out, "{:>width$}   #{i:<2} {}", "", frame_text(frame))?;
                }
                Ok(())
            }
        }
    }

    /// A fault (`trace --faults`) with the mapping it hit: a JSON line; the table
    /// counts it and lists faults per mapping in the summary instead (a 1 GiB memset is
    /// 262,144 lines, and formatting them as a table lost a quarter of them: see
    /// docs/tracing.md).
    pub fn fault(&mut self, event: &Event, vma: Option<json::FaultVma>) -> io::Result<()> {
        self.counts[event.probe() as usize] += 1;
        if self.format == Format::Table {
            return Ok(());
        }
        let Event::Fault(e) = event else {
            return self.event(event, None);
        };
        let cgroup_id = e.header.cgroup_id;
        let cgroup = self
            .cgroups
            .as_mut()
            .and_then(|names| names.name(cgroup_id));
        self.line.clear();
        json::write_fault(&mut self.line, e, vma.as_ref());
        json::append_cgroup(&mut self.line, cgroup_id, cgroup);
        self.line.push(b'\n');
        self.out.write_all(&self.line)
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
        let by_faults = s
            .faults
            .as_ref()
            .map(crate::faults::Faults::by_faults)
            .unwrap_or_default();
        let member =
            |m: u32| mmap_trace_common::RssMember::from_u32(m).map_or("unknown", |m| m.name());
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
                    faults_by_mapping: s.faults.as_ref().map(|_| {
                        by_faults
                            .iter()
                            .map(|m| JsonMappingFaults {
                                pid: m.pid,
                                start: json::Hex(m.start),
                                end: json::Hex(m.end),
                                perms: m.perms.clone(),
                                name: String::from_utf8_lossy(&m.name).into_owned(),
                                faults: m.faults,
                                writes: m.writes,
                                present: m.present,
                                major: m.major,
                                first_ns: m.first_ns,
                            })
                            .collect()
                    }),
                    faults_unattributed: s.faults.as_ref().map(|f| f.unattributed),
                    resident: s.faults.as_ref().map(|f| {
                        f.resident
                            .iter()
                            .map(|(&(pid, m), r)| JsonResident {
                                pid,
                                member: member(m),
                                first_bytes: r.first,
                                last_bytes: r.last,
                                peak_bytes: r.peak,
                            })
                            .collect()
                    }),
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
                        "# verify: {} checkpoints, {} mismatches, {} page PFNs checked ({} full passes, {} pagemap reads of {} entries); maps read whole {} times, {} VMAs queried",
                        v.checkpoints,
                        v.mismatches,
                        v.pfn_checks,
                        v.pfn_full_passes,
                        v.pagemap_reads,
                        v.pagemap_entries,
                        v.maps_whole_reads,
                        v.maps_queried_vmas
                    )?;
                }
                if let Some(f) = &s.faults {
                    writeln!(
                        self.out,
                        "# faults by mapping (top {TABLE_TOP_MAPPINGS} of {}; {} at no known mapping):",
                        by_faults.len(),
                        f.unattributed
                    )?;
                    for m in by_faults.iter().take(TABLE_TOP_MAPPINGS) {
                        writeln!(
                            self.out,
                            "#   {:>7} {:>10} faults ({} writes, {} on present pages, {} needed I/O) {:x}-{:x} {} {}",
                            m.pid,
                            m.faults,
                            m.writes,
                            m.present,
                            m.major,
                            m.start,
                            m.end,
                            m.perms,
                            escape(&m.name)
                        )?;
                    }
                    writeln!(self.out, "# resident memory (first / last / peak, KiB):")?;
                    for (&(pid, m), r) in &f.resident {
                        writeln!(
                            self.out,
                            "#   {pid:>7} {:<6} {:>10} {:>10} {:>10}",
                            member(m),
                            r.first >> 10,
                            r.last >> 10,
                            r.peak >> 10
                        )?;
                    }
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

/// Inserts `"stack":[…]` before the closing brace of the JSON object in `line`.
fn append_stack(line: &mut Vec<u8>, stack: Option<&NamedStack>) -> io::Result<()> {
    let Some(stack) = stack else {
        return Ok(());
    };
    if line.last() == Some(&b'}') {
        line.pop();
    }
    line.extend_from_slice(br#","stack":"#);
    line.extend_from_slice(&stack.json);
    line.push(b'}');
    Ok(())
}

/// `0x7f…  name (file+0xoff)` for the table, `name` `??` where unknown.
fn frame_text(f: &Frame) -> String {
    let mut text = format!("{:#x} {}", f.addr.0, f.sym.as_deref().unwrap_or("??"));
    if let (Some(file), Some(off)) = (&f.file, f.off) {
        text.push_str(&format!(" ({file}+{:#x})", off.0));
    }
    if let (Some(src), Some(line)) = (&f.src, f.line) {
        text.push_str(&format!(" at {src}:{line}"));
    }
    text
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `HH:MM:SS.ffffff` in local time for CLOCK_REALTIME ns (bcc's `-T`, with microseconds).
fn time_of_day(realtime_ns: i64) -> String {
    let secs = realtime_ns.div_euclid(1_000_000_000) as libc::time_t;
    let micros = realtime_ns.rem_euclid(1_000_000_000) / 1_000;
    // SAFETY: an all-zero tm is valid; localtime_r writes it from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to locals that outlive the call.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return format!("{secs}.{micros:06}");
    }
    format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        tm.tm_hour, tm.tm_min, tm.tm_sec
    )
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
        let exact = map
            .get(&format!("{key}_hex"))
            .and_then(Value::as_str)
            .and_then(unhex);
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
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
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
                c.encode_utf8(&mut buf)
                    .bytes()
                    .for_each(|b| octal(&mut out, b));
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
