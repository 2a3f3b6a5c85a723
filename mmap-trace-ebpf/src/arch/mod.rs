//! What differs by architecture, and only that: the syscall numbers of the calls the
//! probes care about, where a syscall's number and arguments sit in the kernel's
//! `pt_regs`, whether the task is in a 32-bit (compat) syscall, and the user registers a
//! stack unwinder starts from. One file per `bpf_target_arch` (aya-build sets it from
//! the CLI's target); userspace decodes the numbers with its own table (the CLI is built
//! for the same architecture).

#[cfg(bpf_target_arch = "aarch64")]
mod aarch64;
#[cfg(bpf_target_arch = "x86_64")]
mod x86_64;

#[cfg(bpf_target_arch = "aarch64")]
pub use aarch64::*;
#[cfg(bpf_target_arch = "x86_64")]
pub use x86_64::*;

/// A syscall's number and its six arguments, as the task's user `pt_regs` hold them for
/// the whole call (read at `sys_exit`).
#[derive(Clone, Copy)]
pub struct SyscallRegs {
    pub nr: u64,
    pub args: [u64; 6],
}

/// The user registers an unwinder starts from.
#[derive(Clone, Copy, Default)]
pub struct UserFrame {
    pub ip: u64,
    pub sp: u64,
    /// The frame pointer (x86's rbp, arm64's x29).
    pub fp: u64,
    /// arm64's link register (x30); 0 on x86-64, whose return address is on the stack.
    pub lr: u64,
}
