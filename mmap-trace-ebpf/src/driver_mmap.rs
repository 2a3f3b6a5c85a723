//! kprobe + kretprobe on the driver's `mmap(file, vma)` file operation: the VMA as the
//! driver received it waits in a per-thread map; the return re-reads it and emits one
//! `DriverMmapEvent` holding both, so what the driver changed is visible.

use aya_ebpf::{
    macros::{kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use mmap_trace_common::{DriverMmapEvent, EventKind, Probe, VmaFields};

use crate::{emit, kernel};

#[map]
static DRIVER_MMAP_ENTRY: LruHashMap<u32, VmaFields> = LruHashMap::with_max_entries(1024, 0);

#[kprobe]
pub fn driver_mmap(ctx: ProbeContext) -> u32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    let Some(offsets) = kernel::offsets() else {
        return 0;
    };
    // Insert first, then fill in place: VmaFields is too big to build on the BPF stack
    // twice.
    let _ = DRIVER_MMAP_ENTRY.insert(task.tid, EMPTY_VMA, 0);
    let Some(before) = DRIVER_MMAP_ENTRY.get_ptr_mut(task.tid) else {
        return 0;
    };
    // SAFETY: the pointer came from a successful lookup in a map we own.
    unsafe { kernel::read_vma(ctx.arg(1).unwrap_or(0), &offsets, &mut *before) };
    0
}

#[kretprobe]
pub fn driver_mmap_ret(ctx: RetProbeContext) -> u32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    let Some(before) = DRIVER_MMAP_ENTRY.get_ptr(task.tid) else {
        return 0;
    };
    let Some(offsets) = kernel::offsets() else {
        return 0;
    };
    let Some(mut entry) = emit::reserve::<DriverMmapEvent>(Probe::DriverMmap) else {
        let _ = DRIVER_MMAP_ENTRY.remove(task.tid);
        return 0;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `before` came from a successful lookup; `event` points at a reserved record
    // we own until submit; every field is written before submit.
    unsafe {
        (*event).header = emit::header(EventKind::DriverMmap, Probe::DriverMmap, &task);
        (*event).before = *before;
        kernel::read_vma((*before).vma, &offsets, &mut (*event).after);
        (*event).ret = ctx.ret::<i32>() as i64;
    }
    let _ = DRIVER_MMAP_ENTRY.remove(task.tid);
    entry.submit(0);
    // Rare (one per driver mmap): worth a line in the CLI's log (RUST_LOG=info).
    let ret = ctx.ret::<i32>();
    aya_log_ebpf::info!(&ctx, "driver mmap hook returned {} (pid {})", ret, task.pid);
    0
}

static EMPTY_VMA: VmaFields = VmaFields {
    vma: 0,
    vm_start: 0,
    vm_end: 0,
    vm_flags: 0,
    vm_pgoff: 0,
    file: mmap_trace_common::FileId {
        dev: 0,
        flags: 0,
        name_len: 0,
        ino: 0,
        name: [0; mmap_trace_common::FILE_NAME_LEN],
    },
};
