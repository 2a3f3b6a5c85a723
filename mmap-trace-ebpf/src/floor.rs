//! The floors for `cargo xtask bench`, loaded only by `mmap-trace-floor`:
//!
//! - empty programs on the attach points `trace` uses by default (the raw `sys_exit`
//!   tracepoint, the catch-all's `mmap_lock_acquire_returned` and `sched_process_exec`):
//!   what any program there costs before doing anything (entering BPF, and the
//!   tracepoints' own work once enabled);
//! - with `--records`, `sys_exit` instead writes the least record a syscall tracer with
//!   arguments can write for each of the five calls trace reports (a timestamp, the ids,
//!   the number, the arguments and the return value; filtered by pid and call number)
//!   into a ring buffer that wakes nobody, for a reader that only counts them: what
//!   recording a call costs whatever the tool, so what is left between it and `trace` is
//!   trace's own.
//!
//! mmap-trace's cost is reported against both.

use aya_ebpf::{
    bindings::{BPF_RB_NO_WAKEUP, pt_regs},
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use crate::syscalls::{self, SyscallRegs};

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

/// The traced process (`--records`); set by the loader.
#[unsafe(no_mangle)]
static FLOOR_TGID: u32 = 0;

/// The records of `floor_record_sys_exit`. One page here, so that every other load of
/// this object (trace's, verify's) creates no more than that; `floor --records` sizes it
/// as trace's default ring.
#[map]
static FLOOR_RECORDS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Records the ring had no room for.
#[map]
static FLOOR_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The least a record of a syscall with its arguments holds (80 bytes; trace's
/// `SyscallEvent` adds the entry time, the comm and the cgroup, 112).
#[repr(C)]
struct FloorRecord {
    ts_ns: u64,
    pid_tgid: u64,
    nr: u64,
    args: [u64; 6],
    ret: i64,
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_record_sys_exit(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    if (pid_tgid >> 32) as u32 != unsafe { core::ptr::read_volatile(&FLOOR_TGID) } {
        return 0;
    }
    let Some(regs) = SyscallRegs::read(ctx.arg::<*const pt_regs>(0)) else {
        return 0;
    };
    // trace's five calls, whatever trace would be asked for.
    if syscalls::probe_of(regs.nr).is_none() {
        return 0;
    }
    let Some(mut entry) = FLOOR_RECORDS.reserve::<FloorRecord>(0) else {
        if let Some(lost) = FLOOR_LOST.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; one program, which never runs twice at once on it.
            unsafe { *lost += 1 };
        }
        return 0;
    };
    entry.write(FloorRecord {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        pid_tgid,
        nr: regs.nr,
        args: regs.args,
        ret: ctx.arg::<i64>(1),
    });
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    0
}
