//! `kmem/rss_stat`: a traced process's resident-set counter of one type (file, anon,
//! swap, shmem) changed. The trace event, not the raw tracepoint: the raw one passes
//! `(mm, member)` and the value is a per-CPU counter that only the event's own code sums
//! (`percpu_counter_sum_positive`). It fires on every change — once per fault that maps a
//! page — so the program keeps the last step it reported per (process, type) and emits a
//! record only when the counter moved to another `RSS_QUANTUM` step.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use mmap_trace_common::{EventKind, Probe, RSS_QUANTUM, RssEvent, RssFormat};

use crate::emit;

/// Field offsets from this kernel's format file, set by the loader.
#[unsafe(no_mangle)]
static RSS_FORMAT: RssFormat = RssFormat {
    curr: 0,
    member: 0,
    size: 0,
    valid: 0,
};

/// The step last reported, by `tgid << 2 | member` (+1, so 0 means none yet).
#[map]
static RSS_LAST: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

#[tracepoint]
pub fn rss_stat(ctx: TracePointContext) -> u32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let f = unsafe { core::ptr::read_volatile(&RSS_FORMAT) };
    if f.valid == 0 {
        return 0;
    }
    // `curr`: the counter is the current task's own mm (not another task acting on it,
    // nor the exiting task's mm after exit_mm cleared it).
    // SAFETY: an offset inside this tracepoint's record, from its format file.
    if unsafe { ctx.read_at::<u32>(f.curr as usize) }.unwrap_or(0) == 0 {
        return 0;
    }
    // SAFETY: as above.
    let member = unsafe { ctx.read_at::<i32>(f.member as usize) }.unwrap_or(-1);
    if !(0..4).contains(&member) {
        return 0;
    }
    // SAFETY: as above.
    let bytes = unsafe { ctx.read_at::<i64>(f.size as usize) }.unwrap_or(0);
    let key = (u64::from(task.pid) << 2) | member as u64;
    let step = (bytes.max(0) as u64) / RSS_QUANTUM + 1;
    // SAFETY: a plain lookup; the value is copied at once.
    if unsafe { RSS_LAST.get(key) }.copied() == Some(step) {
        return 0;
    }
    let _ = RSS_LAST.insert(key, step, 0);
    if let Some(mut entry) = emit::reserve::<RssEvent>(Probe::Rss) {
        entry.write(RssEvent {
            header: emit::header(EventKind::Rss, Probe::Rss, &task),
            member: member as u32,
            _pad: 0,
            bytes,
        });
        emit::submit_batched(entry);
    }
    0
}
