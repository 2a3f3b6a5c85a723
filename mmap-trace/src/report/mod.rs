//! `mmap-trace report`: a trace (JSON Lines from `trace --json` or `verify --json`)
//! replayed into per-process address-space timelines, shown as a text summary or as one
//! self-contained HTML page (inline SVG and script, nothing fetched).
//!
//! Owns reading a trace (through the schema's typed records: `input`), the replayed
//! model (`model`, on the address-space rules of space/) and its renderings (text, HTML,
//! Perfetto). May not touch: the kernel or any live process (it needs no root and reads
//! one file), nor how the records are written (schema/ and output/ own that).

mod html;
mod input;
mod model;
mod perfetto;
mod text;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Args;

#[derive(Args)]
pub struct ReportArgs {
    /// A JSON Lines trace written by `mmap-trace trace --json` (or `verify --json`).
    #[arg(value_name = "TRACE")]
    trace: PathBuf,
    /// Only this process.
    #[arg(long, short, value_name = "PID")]
    pid: Option<u32>,
    /// Write an HTML timeline of the address space to FILE instead of the text summary.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Write the timeline as a Perfetto trace to FILE (open it in ui.perfetto.dev): per
    /// process a slice per VMA interval and a counter of the mapped bytes. With --html,
    /// both are written.
    #[arg(long, value_name = "FILE")]
    perfetto: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let trace = input::read(&args.trace)?;
    let mut processes = model::replay(&trace);
    if let Some(pid) = args.pid {
        let present: Vec<String> = processes
            .iter()
            .map(|p| format!("{} ({})", p.pid, p.comm))
            .collect();
        processes.retain(|p| p.pid == pid);
        if processes.is_empty() {
            bail!(
                "pid {pid} has no events in {}; the trace has: {}",
                args.trace.display(),
                present.join(", ")
            );
        }
    }
    let title = args.trace.display().to_string();
    if let Some(path) = &args.perfetto {
        let written = perfetto::render(&trace, &processes);
        std::fs::write(path, &written.bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "mmap-trace: wrote {} ({} process(es), {} VMA slices on {} lanes)",
            path.display(),
            processes.len(),
            written.slices,
            written.lanes
        );
    }
    match args.html {
        None if args.perfetto.is_some() => {}
        Some(path) => {
            let page = html::render(&trace, &processes, &title);
            std::fs::write(&path, page)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let bars: usize = processes.iter().map(|p| p.vmas.len()).sum();
            eprintln!(
                "mmap-trace: wrote {} ({} process(es), {bars} VMA bars)",
                path.display(),
                processes.len()
            );
        }
        None => print!("{}", text::render(&trace, &processes, &title)),
    }
    Ok(())
}

/// `16 KiB`, `1.5 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration in ns as `+12.345 ms`-style text with a unit that fits.
fn duration(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.3} ms", ns as f64 / 1e6),
        _ => format!("{:.3} s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(4096), "4 KiB");
        assert_eq!(bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(duration(999), "999 ns");
        assert_eq!(duration(12_345_678), "12.346 ms");
        assert_eq!(duration(2_500_000_000), "2.500 s");
    }
}
