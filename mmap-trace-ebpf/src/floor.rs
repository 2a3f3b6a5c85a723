//! The floor for `cargo xtask bench`: empty programs on the attach points `trace` uses by
//! default (the raw `sys_exit` tracepoint, the catch-all's `mmap_lock_acquire_returned`
//! and `sched_process_exec`). What a loop costs under them is what any program there
//! costs before doing anything (entering BPF, and the tracepoints' own work once enabled);
//! mmap-trace's cost is reported against it. Loaded only by the hidden `mmap-trace floor`.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_sys_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Reads no argument, so one program fits both of the tracepoint's prototypes.
#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn floor_mmap_lock(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[tracepoint]
pub fn floor_exec(_ctx: TracePointContext) -> u32 {
    0
}
