//! `--stacks`: the user registers and the top of the user stack, appended to a syscall
//! or catch-all record (`Stacked<T>`), for userspace to unwind with `.eh_frame`.
//!
//! Not `bpf_get_stack(BPF_F_USER_STACK)`: it walks frame pointers, and Debian's binaries
//! and libraries are built without them, so it stops after a frame or two in libc. A copy
//! of the stack plus ip/sp/bp is what a DWARF unwinder needs (perf's `--call-graph
//! dwarf` does the same). The copy is appended to the event's own record rather than
//! sent as a record of its own: one reservation, so the event and its stack are kept or
//! lost together and userspace joins nothing.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_probe_read_kernel, generated::bpf_probe_read_user},
};
use mmap_trace_common::{Probe, Stacked, USER_STACK_BYTES, USER_STACK_CHUNK, UserStack};

use crate::emit;

/// Non-zero with `--stacks`; set by the loader. Zero: records carry no stack and the
/// probes pay one global read.
#[unsafe(no_mangle)]
static STACKS: u32 = 0;

#[inline(always)]
pub fn wanted() -> bool {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    unsafe { core::ptr::read_volatile(&STACKS) != 0 }
}

/// Writes the record `T` of `probe` (filled in place by `fill`), with the user stack of
/// `regs` (the task's user `pt_regs`) appended when `--stacks` is on, and submits it.
#[inline(always)]
pub fn emit<T: 'static>(
    probe: Probe,
    regs: *const pt_regs,
    batched: bool,
    fill: impl FnOnce(*mut T),
) {
    if wanted() && !regs.is_null() {
        let Some(mut entry) = emit::reserve::<Stacked<T>>(probe) else {
            return;
        };
        let record = entry.as_mut_ptr();
        // SAFETY: `record` is reserved and ours until submit; both parts are written.
        unsafe {
            fill(core::ptr::addr_of_mut!((*record).event));
            capture(regs, core::ptr::addr_of_mut!((*record).stack));
        }
        submit(entry, batched);
    } else {
        let Some(mut entry) = emit::reserve::<T>(probe) else {
            return;
        };
        fill(entry.as_mut_ptr());
        submit(entry, batched);
    }
}

#[inline(always)]
fn submit<T>(entry: aya_ebpf::maps::ring_buf::RingBufEntry<T>, batched: bool) {
    if batched {
        emit::submit_batched(entry);
    } else {
        entry.submit(0);
    }
}

/// Fills `out` from the user registers at `regs` and the stack above their `sp`.
///
/// # Safety
/// `out` must be writable (a reserved ring-buffer record).
#[inline(always)]
unsafe fn capture(regs: *const pt_regs, out: *mut UserStack) {
    // SAFETY: the helper tolerates bad addresses; the fields are the kernel's pt_regs.
    let read = |field: *const u64| unsafe { bpf_probe_read_kernel(field) }.unwrap_or(0);
    // SAFETY: only addresses are computed here, nothing is dereferenced.
    let (ip, sp, bp) = unsafe {
        (
            read(core::ptr::addr_of!((*regs).rip)),
            read(core::ptr::addr_of!((*regs).rsp)),
            read(core::ptr::addr_of!((*regs).rbp)),
        )
    };
    let mut len = 0u32;
    // Chunk by chunk: one read of the whole window fails as a whole when the stack's top
    // (or a page not present) is inside it, and this keeps what precedes it.
    for i in 0..USER_STACK_BYTES / USER_STACK_CHUNK {
        let offset = i * USER_STACK_CHUNK;
        // SAFETY: `offset + CHUNK <= USER_STACK_BYTES`, inside `out.bytes`; the helper
        // tolerates bad user addresses (and zeroes the chunk).
        let failed = sp == 0
            || unsafe {
                bpf_probe_read_user(
                    (*out).bytes.as_mut_ptr().add(offset).cast(),
                    USER_STACK_CHUNK as u32,
                    (sp + offset as u64) as *const _,
                )
            } != 0;
        if failed {
            break;
        }
        len += USER_STACK_CHUNK as u32;
    }
    // SAFETY: `out` is writable (the caller's contract).
    unsafe {
        (*out).ip = ip;
        (*out).sp = sp;
        (*out).bp = bp;
        (*out).len = len;
        (*out)._pad = 0;
    }
}
