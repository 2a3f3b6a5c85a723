//! The table for people: one aligned line per event from its typed record, the probe's
//! own fields as `key=value`s ([`crate::schema::details`]: what the JSON holds, names as
//! maps escapes them), and the summary's lines from the summary record.

use std::io::{self, Write};

use crate::schema::{
    self, EventRecord, Frame, SummaryRecord, Text, details, details_line, exact_bytes,
};

/// Mappings the table's summary lists (JSON lists them all).
const TOP_MAPPINGS: usize = 10;

/// The table's state: its header, and how its time column is written.
pub struct Table {
    /// CLOCK_MONOTONIC ns at attach; times are relative to it.
    start_ns: u64,
    /// `trace -T`: CLOCK_REALTIME − CLOCK_MONOTONIC (ns), to print times as the
    /// wall-clock time of day.
    wall_clock: Option<i64>,
    header_done: bool,
}

impl Table {
    pub fn new(start_ns: u64) -> Self {
        Self {
            start_ns,
            wall_clock: None,
            header_done: false,
        }
    }

    /// Times as the wall-clock time of day (`trace -T`), from now on.
    pub fn wall_clock(&mut self) {
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        self.wall_clock = Some(realtime as i64 - clock_ns(libc::CLOCK_MONOTONIC) as i64);
    }

    /// An event's line; with its stack (`trace --stacks`), the innermost frame outside
    /// libc after the details and the whole stack indented below.
    pub fn event(
        &mut self,
        out: &mut impl Write,
        record: &EventRecord<'_>,
        frames: &[Frame],
    ) -> io::Result<()> {
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
                out,
                "{time:>width$} {:>7} {:>7} {:<16} {:<15} DETAILS",
                "PID", "TID", "COMM", "PROBE"
            )?;
        }
        let time = match self.wall_clock {
            Some(offset) => time_of_day(record.ts_ns as i64 + offset),
            None => format!(
                "{:.6}",
                record.ts_ns.saturating_sub(self.start_ns) as f64 / 1e9
            ),
        };
        // The probe is the body's tag: its own column, not a detail.
        let mut fields = details(&record.body, &[]);
        let probe = match fields.iter().position(|d| d.key == "probe") {
            Some(i) => match fields.remove(i).value {
                Text::Bytes(name) => String::from_utf8_lossy(&name).into_owned(),
                Text::Json(other) => other,
            },
            None => String::new(),
        };
        let details = details_line(&fields, escape);
        let comm = escape(&exact_bytes(&record.comm, record.comm_hex.as_deref()));
        let caller = frames
            .iter()
            .find(|f| !in_libc(f))
            .map(|f| format!("  <- {}", frame_text(f)))
            .unwrap_or_default();
        writeln!(
            out,
            "{time:>width$} {:>7} {:>7} {comm:<16} {probe:<15} {details}{caller}",
            record.pid, record.tid
        )?;
        for (i, frame) in frames.iter().enumerate() {
            writeln!(out, "{:>width$}   #{i:<2} {}", "", frame_text(frame))?;
        }
        Ok(())
    }
}

/// The summary's `#` lines: totals, each probe, and what verify or `--faults` added.
pub fn summary(out: &mut impl Write, s: &SummaryRecord) -> io::Result<()> {
    writeln!(
        out,
        "# summary: {} events, {} lost, {:.3} s, ended: {}",
        s.events_total, s.lost_total, s.duration_s, s.ended
    )?;
    for probe in &s.probes {
        writeln!(
            out,
            "#   {probe:<16} {:>10} events {:>8} lost",
            s.events.get(probe).unwrap_or(0),
            s.lost.get(probe).unwrap_or(0)
        )?;
    }
    if let Some(v) = &s.verify {
        writeln!(
            out,
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
            out,
            "# faults by mapping (top {TOP_MAPPINGS} of {}; {} at no known mapping):",
            f.faults_by_mapping.len(),
            f.faults_unattributed
        )?;
        for m in f.faults_by_mapping.iter().take(TOP_MAPPINGS) {
            writeln!(
                out,
                "#   {:>7} {:>10} faults ({} writes, {} on present pages, {} needed I/O) {:x}-{:x} {} {}",
                m.pid,
                m.faults,
                m.writes,
                m.present,
                m.major,
                m.start,
                m.end,
                m.perms,
                escape(&exact_bytes(&m.name, m.name_hex.as_deref()))
            )?;
        }
        writeln!(out, "# resident memory (first / last / peak, KiB):")?;
        for r in &f.resident {
            writeln!(
                out,
                "#   {:>7} {:<6} {:>10} {:>10} {:>10}",
                r.pid,
                r.member,
                r.first_bytes >> 10,
                r.last_bytes >> 10,
                r.peak_bytes >> 10
            )?;
        }
    }
    if s.malformed > 0 {
        writeln!(out, "#   malformed records: {}", s.malformed)?;
    }
    Ok(())
}

/// Any other record: its JSON after `# `, so the table stays one record per line.
pub fn record<T: schema::Record>(out: &mut impl Write, record: &T) -> io::Result<()> {
    out.write_all(b"# ")?;
    super::write_record(out, record)
}

/// True for frames in the C library (the table names the first frame that is not).
fn in_libc(f: &Frame) -> bool {
    f.file.as_deref().is_some_and(|f| {
        let name = f.rsplit('/').next().unwrap_or(f);
        name.starts_with("libc.so") || name.starts_with("libc-")
    })
}

/// `0x7f…  name (file+0xoff)` for the table, `name` `??` where unknown.
fn frame_text(f: &Frame) -> String {
    let mut text = format!("{:#x} {}", f.addr, f.sym.as_deref().unwrap_or("??"));
    if let (Some(file), Some(off)) = (&f.file, f.off) {
        text.push_str(&format!(" ({file}+{off:#x})"));
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
    use serde_json::{Map, Value};

    use super::*;
    use crate::{
        kernel::decode::{Event, FilePath, test_event, test_syscall_event},
        output::json::record,
    };

    /// The table's details, read off the record's JSON object the way the table did
    /// before it read typed records: the reference the typed flattening must match.
    fn from_json(prefix: &str, map: &Map<String, Value>, parts: &mut Vec<String>) {
        for (key, value) in map {
            if key.ends_with("_raw") || key.ends_with("_hex") {
                continue;
            }
            let exact = map
                .get(&format!("{key}_hex"))
                .and_then(Value::as_str)
                .map(|hex| exact_bytes("", Some(hex)).into_owned());
            match value {
                Value::Object(inner) => from_json(&format!("{prefix}{key}."), inner, parts),
                Value::String(s) => {
                    let text = escape(exact.as_deref().unwrap_or(s.as_bytes()));
                    parts.push(format!("{prefix}{key}={text}"));
                }
                other => parts.push(format!("{prefix}{key}={other}")),
            }
        }
    }

    #[test]
    fn details_are_what_the_json_holds() {
        use mmap_trace_common::{FileId, Probe};
        let mut file = FileId {
            dev: 0xfe << 20,
            flags: 0,
            name_len: 0,
            ino: 9,
            name: [0; mmap_trace_common::FILE_NAME_LEN],
        };
        let name = b"a b\xff\n.so";
        file.name[..name.len()].copy_from_slice(name);
        let path = FilePath {
            bytes: b"/tmp/a b/\xff\n.so".to_vec(),
            truncated: false,
            deleted: true,
        };
        for probe in [
            Probe::Mmap,
            Probe::Munmap,
            Probe::Mprotect,
            Probe::Mremap,
            Probe::Brk,
        ] {
            for ret in [0, -22, 0x7f00_0000_0000] {
                let args = [0x7f00_0000_0000, 0x4000, 3, 0x22 | 0x8000_0000, 3, 0x1000];
                let e = test_syscall_event(probe, b"w", args, ret);
                let event: Event = test_event(e, Some(file));
                let rec = record(&event, Some(path.clone()));
                let Value::Object(mut json) = serde_json::to_value(&rec.body).unwrap() else {
                    panic!("a body is an object");
                };
                json.shift_remove("probe");
                let mut parts = Vec::new();
                from_json("", &json, &mut parts);
                let mut fields = details(&rec.body, &["probe"]);
                fields.retain(|d| d.key != "probe");
                assert_eq!(details_line(&fields, escape), parts.join(" "));
            }
        }
    }

    #[test]
    fn table_cells_escape_like_the_kernel() {
        assert_eq!(escape(b"/tmp/new\nline"), "/tmp/new\\012line");
        assert_eq!(escape(b"a b\tc\\d"), "a\\040b\\011c\\134d");
        assert_eq!(escape(b"\xff\xfe-bin"), "\\377\\376-bin");
        assert_eq!(escape("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(escape(b"[heap]"), "[heap]");
    }
}
