//! x86-64: the syscall numbers of arch/x86/entry/syscalls/syscall_64.tbl, the `pt_regs`
//! of the `syscall` instruction's entry (r10 stands in for rcx), ia32 as the compat mode.

use aya_ebpf::{bindings::pt_regs, helpers::bpf_probe_read_kernel};
use mmap_trace_common::Probe;

use super::{SyscallRegs, UserFrame};

/// The probe of a syscall number, if it is one of the five with a probe.
#[inline(always)]
pub fn probe_of(nr: u64) -> Option<Probe> {
    Some(match nr {
        9 => Probe::Mmap,
        10 => Probe::Mprotect,
        11 => Probe::Munmap,
        12 => Probe::Brk,
        25 => Probe::Mremap,
        _ => return None,
    })
}

/// Calls that write-lock the caller's mm without changing what its maps show: fork's
/// `dup_mmap` locks the parent's mm to copy it (the child's is reported by the fork
/// probe), exec's is reported by the exec probe, exit's never returns.
#[inline(always)]
pub fn leaves_own_maps(nr: i64) -> bool {
    // clone, fork, vfork, execve, exit, exit_group, execveat, clone3
    matches!(nr, 56 | 57 | 58 | 59 | 60 | 231 | 322 | 435)
}

/// execve, exit, exit_group, execveat.
#[inline(always)]
pub fn is_exec_or_exit(nr: i64) -> bool {
    matches!(nr, 59 | 60 | 231 | 322)
}

/// `TS_COMPAT` in `thread_info.status` (the loader resolves the field from BTF): the
/// task is inside an ia32 syscall (32-bit code, or `int $0x80` from 64-bit code).
pub const COMPAT_MASK: u32 = 0x0002;

/// `offsetof(struct pt_regs, orig_ax)` (a user-space ABI: ptrace exposes it).
const PT_REGS_ORIG_AX: u64 = 120;

/// The syscall number of the task whose user `pt_regs` are at `regs` (-1: none).
#[inline(always)]
pub fn syscall_nr(regs: u64) -> i64 {
    crate::kernel::read(regs, PT_REGS_ORIG_AX as u32)
}

/// `pt_regs` from r10 to orig_ax: one read.
#[repr(C)]
#[derive(Clone, Copy)]
struct Tail {
    r10: u64,
    r9: u64,
    r8: u64,
    _ax: u64,
    _cx: u64,
    dx: u64,
    si: u64,
    di: u64,
    orig_ax: u64,
}

impl SyscallRegs {
    /// The registers `sys_exit`'s first argument points at; the six arguments in the
    /// x86-64 syscall convention.
    #[inline(always)]
    pub fn read(user_regs: *const pt_regs) -> Option<Self> {
        // SAFETY: the helper tolerates bad addresses; `user_regs` is the kernel's own,
        // and `Tail` mirrors pt_regs from r10 on.
        let t =
            unsafe { bpf_probe_read_kernel(core::ptr::addr_of!((*user_regs).r10).cast::<Tail>()) }
                .ok()?;
        Some(SyscallRegs {
            nr: t.orig_ax,
            args: [t.di, t.si, t.dx, t.r10, t.r8, t.r9],
        })
    }
}

/// ip, sp and rbp of the user registers at `regs`.
#[inline(always)]
pub fn user_frame(regs: *const pt_regs) -> UserFrame {
    // SAFETY: the helper tolerates bad addresses; the fields are the kernel's pt_regs.
    let read = |field: *const u64| unsafe { bpf_probe_read_kernel(field) }.unwrap_or(0);
    // SAFETY: only addresses are computed here, nothing is dereferenced.
    unsafe {
        UserFrame {
            ip: read(core::ptr::addr_of!((*regs).rip)),
            sp: read(core::ptr::addr_of!((*regs).rsp)),
            fp: read(core::ptr::addr_of!((*regs).rbp)),
            lr: 0,
        }
    }
}
