//! arm64: the asm-generic syscall numbers (include/uapi/asm-generic/unistd.h; no fork,
//! vfork or plain `open`), the kernel's `struct pt_regs` (`user_pt_regs` — x0…x30, sp,
//! pc, pstate — then `orig_x0` and `syscallno`), AArch32 tasks as the compat mode.
//!
//! At `sys_exit` x0 already holds the return value: the first argument is `orig_x0`.

use aya_ebpf::{bindings::pt_regs, helpers::bpf_probe_read_kernel};
use mmap_trace_common::Probe;

use super::{SyscallRegs, UserFrame};

/// The probe of a syscall number, if it is one of the five with a probe.
#[inline(always)]
pub fn probe_of(nr: u64) -> Option<Probe> {
    Some(match nr {
        222 => Probe::Mmap,
        226 => Probe::Mprotect,
        215 => Probe::Munmap,
        214 => Probe::Brk,
        216 => Probe::Mremap,
        _ => return None,
    })
}

/// Calls that write-lock the caller's mm without changing what its maps show (see the
/// x86-64 file).
#[inline(always)]
pub fn leaves_own_maps(nr: i64) -> bool {
    // exit, exit_group, clone, execve, execveat, clone3
    matches!(nr, 93 | 94 | 220 | 221 | 281 | 435)
}

/// execve, exit, exit_group, execveat.
#[inline(always)]
pub fn is_exec_or_exit(nr: i64) -> bool {
    matches!(nr, 93 | 94 | 221 | 281)
}

/// `_TIF_32BIT` in `thread_info.flags` (the loader resolves the field from BTF): an
/// AArch32 task, whose syscall numbers are arm's EABI table.
pub const COMPAT_MASK: u32 = 1 << 22;

/// `offsetof(struct pt_regs, orig_x0)` and `syscallno` (asm-offsets' S_ORIG_X0 and
/// S_SYSCALLNO; the loader checks them against the kernel's BTF).
pub const PT_REGS_ORIG_X0: u32 = 272;
pub const PT_REGS_SYSCALLNO: u32 = 280;
/// `offsetof(struct pt_regs, regs[1])`.
const PT_REGS_X1: u32 = 8;

/// The syscall number of the task whose user `pt_regs` are at `regs` (-1, NO_SYSCALL,
/// outside a syscall). `syscallno` is an s32.
#[inline(always)]
pub fn syscall_nr(regs: u64) -> i64 {
    i64::from(crate::kernel::read::<i32>(regs, PT_REGS_SYSCALLNO))
}

impl SyscallRegs {
    /// The registers `sys_exit`'s first argument points at.
    #[inline(always)]
    pub fn read(user_regs: *const pt_regs) -> Option<Self> {
        let base = user_regs as u64;
        // SAFETY: the helper tolerates bad addresses; x1…x5 are consecutive.
        let rest =
            unsafe { bpf_probe_read_kernel((base + u64::from(PT_REGS_X1)) as *const [u64; 5]) }
                .ok()?;
        // SAFETY: as above; orig_x0 (u64) is followed by syscallno (s32).
        let tail = unsafe {
            bpf_probe_read_kernel((base + u64::from(PT_REGS_ORIG_X0)) as *const [u64; 2])
        }
        .ok()?;
        let nr = tail[1] as u32 as i32;
        Some(SyscallRegs {
            nr: nr as i64 as u64,
            args: [tail[0], rest[0], rest[1], rest[2], rest[3], rest[4]],
        })
    }
}

/// pc, sp, x29 and x30 of the user registers at `regs`.
#[inline(always)]
pub fn user_frame(regs: *const pt_regs) -> UserFrame {
    let base = regs as u64;
    // SAFETY: the helper tolerates bad addresses; x29, x30, sp and pc are consecutive.
    let [fp, lr, sp, ip] =
        unsafe { bpf_probe_read_kernel((base + 29 * 8) as *const [u64; 4]) }.unwrap_or([0; 4]);
    UserFrame { ip, sp, fp, lr }
}
