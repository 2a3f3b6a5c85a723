//! mmap-trace: trace mmap/VMA activity with eBPF and check it against the kernel's own
//! accounts (/proc/<pid>/maps, pagemap, the companion driver's ground truth).
//!
//! A library so that two binaries share it: the `mmap-trace` command (main.rs) and the
//! bench's floor (mmap-trace-floor/), which loads the same eBPF object. Public: the
//! command's entry point, the JSON Lines records ([`schema`], for tests and tools that
//! read traces) and what the floor reuses ([`floor_support`]); everything else is the
//! command's own.

// One folder per concern: the kernel side, the traced processes, the address-space
// model, the records and how they are written, and what each command does. Data flows one
// way through them: no module imports one that imports it back (`cargo xtask lint`
// checks the graph).
mod agent;
mod cli;
mod faults;
mod kernel;
mod output;
mod process;
mod report;
pub mod schema;
mod space;
mod stacks;
mod trace;
mod verify;

use std::process::ExitCode;

use clap::Parser as _;

/// The `mmap-trace` command: parses the arguments, runs, and maps the outcome to the exit
/// status (0 done, 1 verify disagreed, 2 error).
pub fn main() -> ExitCode {
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

/// What the bench's floor binary (mmap-trace-floor/) reuses, so that it measures the
/// very eBPF object, attach points and ring size `trace` uses.
pub mod floor_support {
    pub use crate::{
        kernel::{
            loader::{DEFAULT_RING_KIB, ebpf_object},
            require_root,
            tracefs::ensure_mounted as ensure_tracefs_mounted,
        },
        process::session::pidfd_open,
    };
}
