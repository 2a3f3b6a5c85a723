//! kprobe on `remap_pfn_range(vma, addr, pfn, size, prot)`: one `RemapPfnEvent` per call.

use aya_ebpf::{macros::kprobe, programs::ProbeContext};
use mmap_trace_common::{EventKind, Probe, RemapPfnEvent};

use crate::{emit, kernel};

#[kprobe]
pub fn remap_pfn_range(ctx: ProbeContext) -> u32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    let Some(offsets) = kernel::offsets() else {
        return 0;
    };
    let Some(mut entry) = emit::reserve::<RemapPfnEvent>(Probe::RemapPfnRange) else {
        return 0;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved record we own until submit; every field is
    // written before submit.
    unsafe {
        (*event).header = emit::header(EventKind::RemapPfn, Probe::RemapPfnRange, &task);
        kernel::read_vma(ctx.arg(0).unwrap_or(0), &offsets, &mut (*event).vma);
        (*event).addr = ctx.arg(1).unwrap_or(0);
        (*event).pfn = ctx.arg(2).unwrap_or(0);
        (*event).size = ctx.arg(3).unwrap_or(0);
        // pgprot_t is a one-word struct passed by value in a register.
        (*event).prot = ctx.arg(4).unwrap_or(0);
    }
    entry.submit(0);
    0
}
