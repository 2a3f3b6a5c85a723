//! `--stacks`: the user registers and the top of the user stack, appended to a syscall
//! or catch-all record (`Stacked<T>`), for userspace to unwind with `.eh_frame`.
//!
//! Not `bpf_get_stack(BPF_F_USER_STACK)`: it walks frame pointers, and Debian's binaries
//! and libraries are built without them, so it stops after a frame or two in libc. A copy
//! of the stack plus ip/sp/bp is what a DWARF unwinder needs (perf's `--call-graph
//! dwarf` does the same). The copy is appended to the event's own record rather than
//! sent as a record of its own: one record, so the event and its stack are kept or lost
//! together and userspace joins nothing.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::generated::{bpf_get_current_task, bpf_probe_read_user},
    macros::map,
    maps::PerCpuArray,
};
use mmap_trace_common::{
    MmapEvent, Probe, Stacked, USER_STACK_BYTES, USER_STACK_CHUNK, USER_STACK_HEADER, UserStack,
};

use crate::{emit, kernel};

/// Non-zero with `--stacks`; set by the loader. Zero: records carry no stack and the
/// probes pay one global read.
#[unsafe(no_mangle)]
static STACKS: u32 = 0;

#[inline(always)]
pub fn wanted() -> bool {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    unsafe { core::ptr::read_volatile(&STACKS) != 0 }
}

/// The largest stacked record (an mmap's), built here before it is copied to the ring.
const SCRATCH_BYTES: usize = core::mem::size_of::<Stacked<MmapEvent>>();

/// One record per CPU: the stacked record is assembled here, then copied to the ring with
/// only the part of the stack copy that was filled (`bpf_ringbuf_output`), where a
/// reservation would take the whole 8 KiB every time.
#[map]
static SCRATCH: PerCpuArray<[u64; SCRATCH_BYTES / 8]> =
    PerCpuArray::with_max_entries(emit::SCRATCH_SLOTS, 0);

/// A record of type `T` being written: in the ring (reserved), or, when `--stacks` is on,
/// in the per-CPU scratch, to be copied to the ring with the stack appended. The caller
/// fills it through [`Record::as_mut_ptr`] in its own body and calls [`Record::submit`]:
/// no closure, which LLVM outlines into a subprogram whose frame adds to sys_exit's, past
/// the 512 bytes the 6.1 verifier allows a call chain.
pub struct Record<T: 'static> {
    record: *mut T,
    /// The record is in the scratch (else reserved in the ring). A flag, not an
    /// `Option<RingBufEntry>`: the 6.1 verifier does not know a reservation is non-null
    /// when tested again later, and walked the stacked path with the ring's record (or
    /// left the reservation unreleased); a constant per path it follows exactly.
    stacked: bool,
    regs: *const pt_regs,
    probe: Probe,
}

impl<T: 'static> Record<T> {
    /// `regs`: the task's user `pt_regs` (null: no stack for this record). `slot`: the
    /// calling program's scratch slot (`emit::SCRATCH_SLOTS`).
    #[inline(always)]
    pub fn start(probe: Probe, regs: *const pt_regs, slot: u32) -> Option<Self> {
        const { assert!(core::mem::size_of::<Stacked<T>>() <= SCRATCH_BYTES) };
        if wanted() && !regs.is_null() {
            let Some(scratch) = SCRATCH.get_ptr_mut(slot) else {
                emit::count_lost(probe);
                return None;
            };
            Some(Self {
                record: scratch.cast::<T>(),
                stacked: true,
                regs,
                probe,
            })
        } else {
            let mut entry = emit::reserve::<T>(probe)?;
            Some(Self {
                record: entry.as_mut_ptr(),
                stacked: false,
                regs,
                probe,
            })
        }
    }

    #[inline(always)]
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.record
    }

    /// Submits the filled record (`batched`: as [`emit::submit_reserved`] wakes).
    #[inline(always)]
    pub fn submit(self, batched: bool) {
        if !self.stacked {
            // SAFETY: a reservation made in `start`, submitted once, here.
            unsafe { emit::submit_reserved(self.record, batched) };
            return;
        }
        let stacked = self.record.cast::<Stacked<T>>();
        // SAFETY: the per-CPU scratch holds a `Stacked<T>` (size asserted in `start`; map
        // values are 8-aligned) and nothing else runs on this CPU's copy meanwhile.
        let len = unsafe { capture(self.regs, core::ptr::addr_of_mut!((*stacked).stack)) };
        let size = core::mem::offset_of!(Stacked<T>, stack) + USER_STACK_HEADER + len;
        let size = size.min(core::mem::size_of::<Stacked<T>>());
        // SAFETY: `size` bytes of the scratch, all written.
        let bytes = unsafe { core::slice::from_raw_parts(self.record.cast::<u8>(), size) };
        emit::output(self.probe, bytes, batched);
    }
}

/// Where the process's first stack frame ends: `mm->start_stack` (argc's address, the
/// initial stack pointer); 0 when unknown.
#[inline(always)]
fn start_stack() -> u64 {
    let (Some(mo), Some(to)) = (crate::exec::mm_offsets(), kernel::task_offsets()) else {
        return 0;
    };
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let mm: u64 = kernel::read(task, to.mm);
    kernel::read(mm, mo.start_stack)
}

/// Fills `out` from the user registers at `regs` and the stack above their `sp`;
/// returns the bytes of stack copied.
///
/// Only up to the main thread's initial stack pointer when `sp` is within reach of it:
/// no frame lies above it (argv, the environment and the auxiliary vector do), so a
/// shallow stack of the main thread costs its depth, not 8 KiB. A thread's stack is
/// elsewhere and is copied up to the full window.
///
/// # Safety
/// `out` must be writable.
#[inline(always)]
unsafe fn capture(regs: *const pt_regs, out: *mut UserStack) -> usize {
    let crate::arch::UserFrame { ip, sp, fp: bp, lr } = crate::arch::user_frame(regs);
    let top = start_stack();
    let wanted = if top > sp && top - sp < USER_STACK_BYTES as u64 {
        // One word above the last frame's return address is read by the unwinder.
        (top - sp + 8) as usize
    } else {
        USER_STACK_BYTES
    };
    let mut len = 0usize;
    // Chunk by chunk: one read of the whole window fails as a whole when the stack's top
    // (or a page not present) is inside it, and this keeps what precedes it.
    for i in 0..USER_STACK_BYTES / USER_STACK_CHUNK {
        let offset = i * USER_STACK_CHUNK;
        if offset >= wanted {
            break;
        }
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
        len += USER_STACK_CHUNK;
    }
    // SAFETY: `out` is writable (the caller's contract).
    unsafe {
        (*out).ip = ip;
        (*out).sp = sp;
        (*out).bp = bp;
        (*out).lr = lr;
        (*out).len = len as u32;
        (*out)._pad = 0;
    }
    len
}
