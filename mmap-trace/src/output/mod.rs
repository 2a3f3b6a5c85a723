//! Where records go: an aligned table for people (`table`) or JSON Lines for programs
//! (`json`: events, with the hand-written hot path). Whole lines only: records are
//! formatted into a buffer and written line by line, so a signal can never leave half a
//! record behind.
//!
//! Owns the two formats and the writing. May not touch: what a command counts or checks
//! (its records come filled, as the schema's types: schema/), the traced processes
//! beyond naming an event's cgroup, or the commands themselves.

pub mod flags;
pub mod json;
mod table;

use std::{
    borrow::Cow,
    io::{self, BufWriter, Write},
};

use mmap_trace_common::{PROBE_COUNT, Probe};

use crate::{
    kernel::decode::{Event, FilePath},
    schema::{
        FaultVma, FaultsSummary, Frame, PerProbe, Record, SummaryRecord, Tagged, VerifyStats,
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// What a finished trace reports: the counts the run loop keeps, and what the command
/// adds (filled by `verify` and `trace --faults`).
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
    pub faults: Option<FaultsSummary>,
}

impl Summary {
    /// The summary record: counts per attached probe, in attach order.
    pub fn record(&self) -> SummaryRecord {
        let per_probe = |values: &[u64; PROBE_COUNT]| {
            PerProbe(
                self.attached
                    .iter()
                    .map(|p| (p.name().to_owned(), values[*p as usize]))
                    .collect(),
            )
        };
        SummaryRecord {
            events: per_probe(&self.events),
            lost: per_probe(&self.lost),
            events_total: self.events.iter().sum(),
            lost_total: self.lost.iter().sum(),
            malformed: self.malformed,
            duration_s: self.duration_ns as f64 / 1e9,
            ended: self.ended.clone(),
            probes: self.attached.iter().map(|p| p.name().to_owned()).collect(),
            verify: self.verify,
            faults: self.faults.clone(),
        }
    }
}

/// A named stack, ready for either format: the frames (the table) and their JSON array,
/// serialized once per distinct stack by its maker (stacks/).
pub struct NamedStack {
    pub frames: Vec<Frame>,
    pub json: Vec<u8>,
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

/// A record as one JSON line: `{"type":…,…}` and a newline.
pub fn write_record<T: Record>(out: &mut impl Write, record: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &Tagged::new(record))?;
    out.write_all(b"\n")
}

/// A closed stdout (e.g. `| head`) ends the trace quietly rather than as an error.
pub fn ignore_closed_output(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e)
    }
}

pub struct Output {
    format: Format,
    out: BufWriter<Box<dyn Write + Send>>,
    table: table::Table,
    /// JSON only: names the cgroup id of each event.
    cgroups: Option<crate::process::cgroup::Names>,
    pub counts: [u64; PROBE_COUNT],
    /// The JSON line being written (reused: no allocation per event).
    line: Vec<u8>,
}

impl Output {
    /// `start_ns`: CLOCK_MONOTONIC at attach; table times are relative to it.
    pub fn new(format: Format, out: Box<dyn Write + Send>, start_ns: u64) -> Self {
        Self {
            format,
            out: BufWriter::with_capacity(256 * 1024, out),
            table: table::Table::new(start_ns),
            cgroups: (format == Format::Json).then(crate::process::cgroup::Names::new),
            counts: [0; PROBE_COUNT],
            line: Vec::with_capacity(512),
        }
    }

    /// Table times as the wall-clock time of day (`trace -T`), from now on.
    pub fn wall_clock(&mut self) {
        self.table.wall_clock();
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
        // An exit only releases the process's state in the consumers: nothing to show.
        if let Event::Exit(_) = event {
            return Ok(());
        }
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
            if let Some(stack) = stack {
                // The stack's JSON (most of the line) goes straight from the named
                // stack's cache to the output buffer: copied once, not into the line too.
                if self.line.last() == Some(&b'}') {
                    self.line.pop();
                }
                self.line.extend_from_slice(br#","stack":"#);
                self.out.write_all(&self.line)?;
                self.out.write_all(&stack.json)?;
                self.line.clear();
                self.line.push(b'}');
            }
            json::append_cgroup(&mut self.line, cgroup_id, cgroup);
            self.line.push(b'\n');
            return self.out.write_all(&self.line);
        }
        let cgroup = cgroup.map(str::to_owned);
        let mut record = json::record(event, path);
        let frames = stack.map_or(&[][..], |s| &s.frames[..]);
        match self.format {
            Format::Json => {
                record.cgroup = cgroup;
                record.stack = stack.map(|_| Cow::Borrowed(frames));
                self.line.clear();
                write_record(&mut self.line, &record)?;
                self.out.write_all(&self.line)
            }
            Format::Table => self.table.event(&mut self.out, &record, frames),
        }
    }

    /// A fault (`trace --faults`) with the mapping it hit: a JSON line; the table
    /// counts it and lists faults per mapping in the summary instead (a 1 GiB memset is
    /// 262,144 lines, and formatting them as a table lost a quarter of them: see
    /// docs/tracing.md).
    pub fn fault(&mut self, event: &Event, vma: Option<FaultVma>) -> io::Result<()> {
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
    pub fn record<T: Record>(&mut self, record: &T) -> io::Result<()> {
        match self.format {
            Format::Json => write_record(&mut self.out, record),
            Format::Table => table::record(&mut self.out, record),
        }
    }

    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        let record = s.record();
        match self.format {
            Format::Json => write_record(&mut self.out, &record),
            Format::Table => table::summary(&mut self.out, &record),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
