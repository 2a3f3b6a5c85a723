//! Names for the catch-all's records: which syscall (the CLI's architecture's numbering,
//! or its 32-bit compat mode's: ia32 on x86-64, AArch32 on arm64) or which other cause
//! write-locked a traced process's mm.

use mmap_trace_common::MmChangeCause;
use syscalls::Sysno;
#[cfg(target_arch = "aarch64")]
use syscalls::arm::Sysno as Compat;
#[cfg(target_arch = "x86_64")]
use syscalls::x86::Sysno as Compat;

/// What the compat mode's calls are prefixed with.
#[cfg(target_arch = "x86_64")]
const COMPAT: &str = "ia32";
#[cfg(target_arch = "aarch64")]
const COMPAT: &str = "aarch32";

/// `mmap`, `shmat`…; `syscall 999` for a number the table does not know; compat calls as
/// `ia32 NAME` (`aarch32 NAME`).
pub fn name(nr: i64, compat: bool) -> String {
    let known = usize::try_from(nr).ok().and_then(|n| {
        if compat {
            Compat::new(n).map(|s| s.name())
        } else {
            Sysno::new(n).map(|s| s.name())
        }
    });
    match (known, compat) {
        (Some(name), false) => name.to_string(),
        (Some(name), true) => format!("{COMPAT} {name}"),
        (None, false) => format!("syscall {nr}"),
        (None, true) => format!("{COMPAT} syscall {nr}"),
    }
}

/// The JSON `cause` of a catch-all record.
pub fn cause_name(cause: u32) -> &'static str {
    match MmChangeCause::from_u32(cause) {
        Some(MmChangeCause::Syscall) => "syscall",
        Some(MmChangeCause::Fault) => "fault",
        Some(MmChangeCause::Kernel) => "kernel",
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn names_calls_in_both_tables() {
        assert_eq!(name(30, false), "shmat");
        assert_eq!(name(329, false), "pkey_mprotect");
        assert_eq!(name(192, true), "ia32 mmap2");
        assert_eq!(name(99_999, false), "syscall 99999");
        assert_eq!(name(-1, false), "syscall -1");
    }
}
