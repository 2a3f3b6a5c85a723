//! The floor for `cargo xtask bench`: an empty program on the attach point the syscall
//! probes use (the raw `sys_exit` tracepoint). What a loop costs under it is what any
//! program there costs before doing anything; mmap-trace's cost is reported against it.
//! Loaded only by the hidden `mmap-trace floor` command.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_sys_exit(_ctx: RawTracePointContext) -> i32 {
    0
}
