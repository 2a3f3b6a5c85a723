//! kprobe + kretprobe on `mmap_region(file, addr, len, vm_flags, pgoff, uf)`: the
//! arguments wait in a per-thread map, the return emits one `MmapRegionEvent`.

use aya_ebpf::{
    macros::{kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use mmap_trace_common::{EventKind, MmapRegionEvent, Probe};

use crate::{emit, kernel};

#[repr(C)]
#[derive(Clone, Copy)]
struct MmapRegionArgs {
    file: u64,
    addr: u64,
    len: u64,
    vm_flags: u64,
    pgoff: u64,
}

#[map]
static MMAP_REGION_ARGS: LruHashMap<u32, MmapRegionArgs> = LruHashMap::with_max_entries(4096, 0);

#[kprobe]
pub fn mmap_region(ctx: ProbeContext) -> u32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    let args = MmapRegionArgs {
        file: ctx.arg(0).unwrap_or(0),
        addr: ctx.arg(1).unwrap_or(0),
        len: ctx.arg(2).unwrap_or(0),
        vm_flags: ctx.arg(3).unwrap_or(0),
        pgoff: ctx.arg(4).unwrap_or(0),
    };
    let _ = MMAP_REGION_ARGS.insert(task.tid, args, 0);
    0
}

#[kretprobe]
pub fn mmap_region_ret(ctx: RetProbeContext) -> u32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    let Some(args) = MMAP_REGION_ARGS.get_ptr(task.tid) else {
        return 0;
    };
    // SAFETY: the pointer came from a successful lookup in a map we own.
    let args = unsafe { *args };
    let _ = MMAP_REGION_ARGS.remove(task.tid);
    let Some(offsets) = kernel::offsets() else {
        return 0;
    };
    let Some(mut entry) = emit::reserve::<MmapRegionEvent>(Probe::MmapRegion) else {
        return 0;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved record we own until submit; every field is
    // written before submit.
    unsafe {
        (*event).header = emit::header(EventKind::MmapRegion, Probe::MmapRegion, &task);
        (*event).addr = args.addr;
        (*event).len = args.len;
        (*event).vm_flags = args.vm_flags;
        (*event).pgoff = args.pgoff;
        (*event).ret = ctx.ret::<i64>();
        kernel::read_file(
            args.file,
            &offsets,
            &mut (*event).file,
            crate::emit::OTHER_SLOT,
        );
        (*event).mmap_hook = file_op(args.file, offsets.fops_mmap, &offsets);
        (*event).mmap_prepare_hook = file_op(args.file, offsets.fops_mmap_prepare, &offsets);
    }
    entry.submit(0);
    0
}

/// The `file->f_op` member at `member`; 0 for anonymous memory, a file without it, or
/// when BTF gave no offset.
#[inline(always)]
fn file_op(file: u64, member: u32, offsets: &mmap_trace_common::KernelOffsets) -> u64 {
    if file == 0 || offsets.file_f_op == 0 || member == 0 {
        return 0;
    }
    let f_op: u64 = kernel::read(file, offsets.file_f_op);
    kernel::read(f_op, member)
}
