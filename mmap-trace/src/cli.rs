//! Command-line interface (clap derive).

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use mmap_trace_common::{Probe, TargetFilter};

use crate::{
    btf::VMLINUX_BTF,
    loader::{DEFAULT_DRIVER_HOOKS, LoadOptions},
    output::Format,
    session::Target,
    trace::{self, TraceConfig},
};

#[derive(Parser)]
#[command(
    name = "mmap-trace",
    version,
    about = "Trace mmap/VMA activity with eBPF and check it against the kernel's own view",
    long_about = "Trace mmap/VMA activity with eBPF and check it against the kernel's own view.\n\n\
        Syscall probes (mmap, munmap, mprotect, mremap, brk) use tracepoints and work on any \
        kernel with BTF and syscall tracepoints. Kernel probes (mmap_region, remap_pfn_range, \
        the mmtrace_drv driver's mmap hook) need kprobes; where the kernel has none they are \
        skipped with a note. Needs root."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream mmap/VMA events of one process, a command, processes by name, or everything.
    #[command(
        after_help = "Examples:\n  \
            mmap-trace trace -- /bin/ls /            trace a command from its first mapping\n  \
            mmap-trace trace --pid 1234 --json       JSON Lines, one object per event\n  \
            mmap-trace trace --comm nginx -d 10      every process named nginx, 10 seconds\n\n\
            Ctrl-C (or SIGTERM) stops the trace: the ring buffer is drained and a summary \
            with per-probe event and lost counts is written last."
    )]
    Trace(TraceArgs),
}

#[derive(Args)]
#[group(id = "target", multiple = false)]
struct TargetArgs {
    /// Trace this process (its threads included).
    #[arg(long, short, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pid: Option<u32>,
    /// Trace processes whose name (comm, 15 bytes at most) is NAME.
    #[arg(long, short, value_name = "NAME")]
    comm: Option<String>,
    /// Run CMD, traced from before its first instruction; the trace ends when it exits.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Args)]
struct TraceArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// JSON Lines output (one object per event, a summary object last).
    #[arg(long)]
    json: bool,
    /// Write events to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Stop after SECS seconds (fractions allowed).
    #[arg(long, short, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Comma-separated probes to attach; default: every probe this kernel supports.
    /// Names: mmap, munmap, mprotect, mremap, brk, exec, mmap_region, remap_pfn_range,
    /// driver_mmap.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_probe)]
    probes: Option<Vec<Probe>>,
    /// Kernel BTF used to find struct field offsets for the kernel probes.
    #[arg(long, value_name = "PATH", default_value = VMLINUX_BTF)]
    btf: PathBuf,
    /// Ring buffer size in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 1024, value_parser = parse_ring_kib)]
    ring_buffer_kib: u32,
    /// Kernel function(s) of the driver's mmap file operation to probe (repeatable).
    #[arg(long = "driver-hook", value_name = "SYMBOL", default_values_t = DEFAULT_DRIVER_HOOKS.iter().map(|s| s.to_string()))]
    driver_hooks: Vec<String>,
}

impl Cli {
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Trace(args) => trace::run(args.into_config()),
        }
    }
}

impl TraceArgs {
    fn into_config(self) -> TraceConfig {
        let t = self.target;
        let target = match (t.pid, t.comm, t.command.is_empty()) {
            (Some(pid), _, _) => Target::Pid(pid),
            (_, Some(comm), _) => Target::Comm(comm),
            (_, _, false) => Target::Command(t.command),
            _ => Target::All,
        };
        TraceConfig {
            target,
            format: if self.json { Format::Json } else { Format::Table },
            output: self.output,
            duration: self.duration,
            load: LoadOptions {
                filter: TargetFilter::default(),
                requested: self.probes,
                btf: self.btf,
                ring_buffer_bytes: self.ring_buffer_kib * 1024,
                driver_hooks: self.driver_hooks,
            },
        }
    }
}

fn parse_probe(name: &str) -> Result<Probe, String> {
    Probe::ALL.iter().copied().find(|p| p.name() == name).ok_or_else(|| {
        let names: Vec<_> = Probe::ALL.iter().map(|p| p.name()).collect();
        format!("unknown probe {name:?}; known probes: {}", names.join(", "))
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite() && secs < 1e9) {
        return Err(format!("{s:?}: the duration must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let kib: u32 = s.parse().map_err(|_| format!("{s:?} is not a whole number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err(format!("{kib} KiB: the ring buffer must be a power of two from 4 KiB to 1 GiB"));
    }
    Ok(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_values() {
        assert!(parse_probe("mmap_region").is_ok());
        assert!(parse_probe("nope").unwrap_err().contains("known probes: mmap,"));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("nan").is_err());
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_ring_kib("3").is_err());
        assert!(parse_ring_kib("6").is_err());
        assert_eq!(parse_ring_kib("64").unwrap(), 64);
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
