//! Syscall tracepoints for mmap, munmap, mprotect, mremap and brk. The entry's arguments
//! wait in a per-thread map; the exit emits ONE joined `SyscallEvent`.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use mmap_trace_common::{EventKind, Probe, SyscallEvent};

use crate::emit::{self, Task};

/// `struct trace_entry` (8 bytes) + `int __syscall_nr` + padding precede the arguments
/// of every `syscalls/sys_enter_*` record and the `ret` of every `sys_exit_*` record;
/// the loader checks this against the tracepoint's format file.
const ARGS_OFFSET: usize = 16;
const RET_OFFSET: usize = 16;

#[repr(C)]
#[derive(Clone, Copy)]
struct PendingCall {
    enter_ts_ns: u64,
    args: [u64; 6],
}

/// Entries of in-flight calls by thread id. LRU: a thread killed inside a call never
/// reaches its exit, and its entry must not pin a slot forever.
#[map]
static PENDING: LruHashMap<u32, PendingCall> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn on_enter(ctx: &TracePointContext, nargs: usize) -> u32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    let mut call = PendingCall {
        // SAFETY: helper without preconditions.
        enter_ts_ns: unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() },
        args: [0; 6],
    };
    let mut i = 0;
    while i < nargs && i < 6 {
        // SAFETY: the offset lies inside this tracepoint's record (checked at load).
        call.args[i] = unsafe { ctx.read_at::<u64>(ARGS_OFFSET + i * 8) }.unwrap_or(0);
        i += 1;
    }
    let _ = PENDING.insert(task.tid, call, 0);
    0
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext, probe: Probe) -> u32 {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    // Only calls whose entry passed the filter are pending.
    let Some(pending) = PENDING.get_ptr(tid) else {
        return 0;
    };
    // SAFETY: the pointer came from a successful lookup in a map we own.
    let call = unsafe { *pending };
    let _ = PENDING.remove(tid);
    let task = Task {
        pid: (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32,
        tid,
    };
    // Stop even when the record is lost: verify must not let the process run ahead.
    emit::stop_if_verifying();
    let Some(mut entry) = emit::reserve::<SyscallEvent>(probe) else {
        return 0;
    };
    // SAFETY: the offset lies inside the sys_exit record.
    let ret = unsafe { ctx.read_at::<i64>(RET_OFFSET) }.unwrap_or(0);
    entry.write(SyscallEvent {
        header: emit::header(EventKind::Syscall, probe, &task),
        enter_ts_ns: call.enter_ts_ns,
        args: call.args,
        ret,
    });
    emit::submit_batched(entry);
    0
}

/// One enter and one exit program per syscall: (enter, exit, probe, number of arguments).
macro_rules! syscall_probes {
    ($(($enter:ident, $exit:ident, $probe:expr, $nargs:expr)),* $(,)?) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            on_enter(&ctx, $nargs)
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_exit(&ctx, $probe)
        }
    )*};
}

syscall_probes!(
    (sys_enter_mmap, sys_exit_mmap, Probe::Mmap, 6),
    (sys_enter_munmap, sys_exit_munmap, Probe::Munmap, 2),
    (sys_enter_mprotect, sys_exit_mprotect, Probe::Mprotect, 3),
    (sys_enter_mremap, sys_exit_mremap, Probe::Mremap, 5),
    (sys_enter_brk, sys_exit_brk, Probe::Brk, 1),
);
