//! Everything that talks to the kernel: loading and attaching the eBPF programs
//! (`loader`), struct offsets from BTF (`btf`), tracefs, decoding the ring buffer's
//! records (`decode`, read by `reader`) and naming the syscalls they carry (`syscall_names`).
//!
//! Owns the kernel's interfaces and what their numbers mean. May not touch: the traced
//! processes (process/), the address-space model, records or output: it hands decoded
//! events up and knows nothing of who reads them.

pub mod btf;
pub mod decode;
pub mod loader;
pub mod preempt;
pub mod reader;
pub mod syscall_names;
pub mod tracefs;

/// Fails unless this process runs as root: loading eBPF programs needs CAP_BPF and
/// CAP_PERFMON. `command` names the subcommand in the message.
pub fn require_root(command: &str) -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "`mmap-trace {command}` needs root (loading eBPF programs needs CAP_BPF and \
             CAP_PERFMON): run it with sudo"
        );
    }
    Ok(())
}
