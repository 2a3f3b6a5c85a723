//! mmap-trace: trace mmap/VMA activity with eBPF and check it against the kernel's own
//! accounts (/proc/<pid>/maps, pagemap, the companion driver's ground truth).

// One folder per concern: the kernel side, the traced processes, the address-space model,
// what each command does, and how records are written.
mod cli;
mod faults;
mod kernel;
mod output;
mod process;
mod report;
mod space;
mod stacks;
mod trace;
mod verify;

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Parser as _;

fn main() -> ExitCode {
    // A bug must still end in one clear line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("mmap-trace: internal error: {info}; please report it");
    }));
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = cli::Cli::parse();
    match cli.run() {
        Ok(cli::Outcome::Done) => ExitCode::SUCCESS,
        Ok(cli::Outcome::Disagreed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mmap-trace: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

pub fn require_root(command: &str) -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`mmap-trace {command}` needs root (loading eBPF programs needs CAP_BPF and \
             CAP_PERFMON): run it with sudo"
        );
    }
    Ok(())
}
