//! mmap-trace's eBPF programs. One file per hook; `emit` owns the ring buffer, the
//! target filter and the lost-event counters; `kernel` reads kernel structs.
#![no_std]
#![no_main]

mod arch;
mod driver_mmap;
mod emit;
mod exec;
mod exit;
mod fault;
mod floor;
mod fork;
mod kernel;
mod mm_lock;
mod mmap_region;
mod page_cache;
mod page_insert;
mod path;
mod remap_pfn_range;
mod rss;
mod stack;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

// bpf_probe_read_kernel is GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
