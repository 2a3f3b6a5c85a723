//! Names for the catch-all's records: which syscall (x86-64 or ia32 numbering) or which
//! other cause write-locked a traced process's mm.

use mmap_trace_common::MmChangeCause;
use syscalls::{x86::Sysno as Ia32, x86_64::Sysno};

/// `mmap`, `shmat`…; `syscall 999` for a number the table does not know; ia32 calls as
/// `ia32 NAME`.
pub fn name(nr: i64, compat: bool) -> String {
    let known = usize::try_from(nr).ok().and_then(|n| {
        if compat {
            Ia32::new(n).map(|s| s.name())
        } else {
            Sysno::new(n).map(|s| s.name())
        }
    });
    match (known, compat) {
        (Some(name), false) => name.to_string(),
        (Some(name), true) => format!("ia32 {name}"),
        (None, false) => format!("syscall {nr}"),
        (None, true) => format!("ia32 syscall {nr}"),
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

    #[test]
    fn names_calls_in_both_tables() {
        assert_eq!(name(30, false), "shmat");
        assert_eq!(name(329, false), "pkey_mprotect");
        assert_eq!(name(192, true), "ia32 mmap2");
        assert_eq!(name(99_999, false), "syscall 99999");
        assert_eq!(name(-1, false), "syscall -1");
    }
}
