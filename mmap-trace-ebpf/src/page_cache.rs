//! `filemap/mm_filemap_add_to_page_cache`: the PFN a file page got, so `verify` can check
//! present file pages of a mapping against /proc/<pid>/pagemap.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use mmap_trace_common::{EventKind, FilemapFormat, PageCacheEvent, Probe};

use crate::emit;

/// Field offsets from this kernel's format file, set by the loader.
#[unsafe(no_mangle)]
static FILEMAP_FORMAT: FilemapFormat = FilemapFormat {
    pfn: 0,
    ino: 0,
    index: 0,
    dev: 0,
    order: 0,
    valid: 0,
};

#[tracepoint]
pub fn mm_filemap_add_to_page_cache(ctx: TracePointContext) -> u32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let f = unsafe { core::ptr::read_volatile(&FILEMAP_FORMAT) };
    if f.valid == 0 {
        return 0;
    }
    let read = |offset: u32| {
        // SAFETY: offsets inside this tracepoint's record, from its format file.
        unsafe { ctx.read_at::<u64>(offset as usize) }.unwrap_or(0)
    };
    let event = PageCacheEvent {
        header: emit::header(EventKind::PageCache, Probe::PageCache, &task),
        pfn: read(f.pfn),
        ino: read(f.ino),
        index: read(f.index),
        dev: read(f.dev) as u32,
        order: if f.order == 0 {
            0
        } else {
            read(f.order) as u8 as u32
        },
    };
    if let Some(mut entry) = emit::reserve::<PageCacheEvent>(Probe::PageCache) {
        entry.write(event);
        entry.submit(0);
    }
    0
}
