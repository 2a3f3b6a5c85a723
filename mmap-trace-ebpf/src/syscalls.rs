//! mmap, munmap, mprotect, mremap and brk, seen from the raw `sys_exit` tracepoint: one
//! `SyscallEvent` per call, with the arguments and the return value (an `MmapEvent` for
//! mmap: the same, and the file its fd named).
//!
//! Raw tracepoints, not the `syscalls/sys_*_mmap` trace events: those build a perf
//! record on every call before any program runs, which doubled the system time of an
//! mmap/munmap loop even with programs that returned at once (issue 6). A raw
//! tracepoint fires for every syscall of every task, so the program checks the tgid
//! filter and the syscall number before anything else.
//!
//! The arguments are read at exit: the kernel keeps the caller's registers in `pt_regs`
//! for the whole call and these syscalls do not change them (x86-64's `syscall` preserves
//! them; arm64 keeps the first in `orig_x0`: arch/), so there is nothing to join. Only `verify` also attaches
//! `sys_enter`, for the entry time it needs to order overlapping calls of threads; that
//! join happens here, in a per-thread map.
//!
//! Kernels whose syscall tracepoints run BPF preemptible (7.x with a preemptive model;
//! the loader decides, see `SYSCALL_GATE`) skip a program for every task that reaches the
//! hook while a preempted run of it is still in progress on that CPU: the per-program
//! recursion guard. There each hook gets four identical programs (`sys_exit`, `sys_exit_2`
//! … `_4`; the loader's `COPIES`): the guard is per program, so a skipped copy leaves the
//! next one to run. Every copy that runs for a traced call of a target thread writes its
//! place in the cycle enter 1–4, exit 1–4 into the thread's [`CallMark`]; the place it
//! finds there says whether an earlier copy of the same hook already ran for this call
//! (then it does nothing), whether the call's `sys_enter` was skipped by every copy (the
//! exit still reports it, without an entry time), or whether the previous call's
//! `sys_exit` was (that call is lost and counted as lost under its probe).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task, bpf_ktime_get_ns},
    },
    macros::{map, raw_tracepoint},
    maps::LruHashMap,
    programs::RawTracePointContext,
};
use mmap_trace_common::{EventKind, MmapEvent, Probe, SyscallEvent};

pub use crate::arch::{SyscallRegs, probe_of};
use crate::{arch, emit, kernel, mm_lock, stack};

/// `MAP_ANONYMOUS`: the fd argument is ignored.
const MAP_ANONYMOUS: u64 = 0x20;

/// Bit `1 << probe` for each syscall probe the user asked for; set by the loader.
#[unsafe(no_mangle)]
static SYSCALL_PROBES: u32 = 0;

/// Non-zero when `sys_enter` is attached and entry times are wanted (`verify`).
#[unsafe(no_mangle)]
static ENTRY_TIMES: u32 = 0;

/// Non-zero when every copy of the hooks is attached and they take turns through
/// `CallMark` (see the module comment); set by the loader.
#[unsafe(no_mangle)]
static SYSCALL_GATE: u32 = 0;

/// Whether the hooks run as gated copies (the catch-all's too: mm_lock.rs).
#[inline(always)]
pub fn gated() -> bool {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    unsafe { core::ptr::read_volatile(&SYSCALL_GATE) != 0 }
}

/// Entry times of in-flight calls by thread id (`verify` on kernels without the gate).
/// LRU: a thread killed inside a call never reaches its exit, and its entry must not pin
/// a slot forever.
#[map]
static ENTERED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Where a gated thread's traced call is: the last copy that ran for it.
#[repr(C)]
#[derive(Clone, Copy)]
struct CallMark {
    /// When the first `sys_enter` copy ran (0: every copy was skipped).
    enter_ts_ns: u64,
    /// The call's number, to count it lost under its probe if its exit never runs.
    nr: u64,
    /// 0–3: `sys_enter` copy 1–4 ran last; 4–7: `sys_exit` copy 1–4.
    place: u32,
    _pad: u32,
}

/// The gate's marks by thread id. LRU, as `ENTERED`.
#[map]
static CALLS: LruHashMap<u32, CallMark> = LruHashMap::with_max_entries(16384, 0);

const EXIT_PLACES: u32 = 4;

/// Offset in `task_struct` of the `thread_info` field that marks a compat syscall
/// (x86's `status`, arm64's `flags`: arch/), from BTF; set by the loader.
#[unsafe(no_mangle)]
static TI_STATUS_OFFSET: u32 = 0;

/// The kernel's `in_compat_syscall()`: true for the syscalls of 32-bit code (ia32, or
/// `int $0x80` from 64-bit code; AArch32), whose numbers name other calls (9 is `link` on
/// ia32).
#[inline(always)]
pub fn in_compat_syscall() -> bool {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let offset = unsafe { core::ptr::read_volatile(&TI_STATUS_OFFSET) };
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: the helper tolerates bad addresses.
    let status = unsafe { bpf_probe_read_kernel((task + u64::from(offset)) as *const u32) };
    status.is_ok_and(|s| s & arch::COMPAT_MASK != 0)
}

/// The probe for a syscall number, if the user asked for it.
#[inline(always)]
pub fn traced(nr: u64) -> Option<Probe> {
    let probe = probe_of(nr)?;
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let wanted = unsafe { core::ptr::read_volatile(&SYSCALL_PROBES) };
    (wanted & (1 << probe as u32) != 0).then_some(probe)
}

/// `sys_enter(struct pt_regs *regs, long id)`: attached under `verify` (entry times) and
/// wherever the gate is on.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    on_enter(&ctx, 0)
}

/// The gate's spare copies of `sys_enter` (see the module comment).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_2(ctx: RawTracePointContext) -> i32 {
    on_enter(&ctx, 1)
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_3(ctx: RawTracePointContext) -> i32 {
    on_enter(&ctx, 2)
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_4(ctx: RawTracePointContext) -> i32 {
    on_enter(&ctx, 3)
}

/// `copy`: 0 for `sys_enter`, 1–3 for the gate's spares.
#[inline(always)]
fn on_enter(ctx: &RawTracePointContext, copy: u32) -> i32 {
    let nr = ctx.arg::<u64>(1);
    if !emit::tgid_passes(bpf_get_current_pid_tgid()) || traced(nr).is_none() || in_compat_syscall()
    {
        return 0;
    }
    let Some(task) = emit::current_task() else {
        return 0;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    if unsafe { core::ptr::read_volatile(&SYSCALL_GATE) } == 0 {
        let _ = ENTERED.insert(task.tid, now, 0);
        return 0;
    }
    // SAFETY: a plain lookup, copied out; only this thread writes its key, one copy at a
    // time.
    let mark = unsafe { CALLS.get(task.tid) }.copied();
    let mut next = CallMark {
        enter_ts_ns: now,
        nr,
        place: copy,
        _pad: 0,
    };
    match mark {
        // An earlier copy of this sys_enter ran: keep its time.
        Some(m) if m.place < copy => next.enter_ts_ns = m.enter_ts_ns,
        // The previous call entered and no sys_exit copy ran for it.
        Some(m) if m.place < EXIT_PLACES => {
            if let Some(probe) = traced(m.nr) {
                emit::count_lost(probe);
            }
        }
        _ => {}
    }
    let _ = CALLS.insert(task.tid, next, 0);
    0
}

/// `sys_exit(struct pt_regs *regs, long ret)`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    on_exit(&ctx, 0)
}

/// The gate's spare copies of `sys_exit` (see the module comment).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_2(ctx: RawTracePointContext) -> i32 {
    on_exit(&ctx, 1)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_3(ctx: RawTracePointContext) -> i32 {
    on_exit(&ctx, 2)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_4(ctx: RawTracePointContext) -> i32 {
    on_exit(&ctx, 3)
}

/// `copy`: 0 for `sys_exit`, 1–3 for the gate's spares.
#[inline(always)]
fn on_exit(ctx: &RawTracePointContext, copy: u32) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !emit::tgid_passes(pid_tgid) {
        return 0;
    }
    // The task's user registers, as the syscall entered (and, under --stacks, where the
    // user stack is).
    let user_regs: *const pt_regs = ctx.arg(0);
    let Some(regs) = SyscallRegs::read(user_regs) else {
        return 0;
    };
    let args = regs.args;
    // An ia32 syscall's numbers mean other calls. One call site for the catch-all: each
    // inlined copy costs stack, and the 6.1 verifier caps the call chain at 512 bytes.
    let probe = match traced(regs.nr) {
        Some(probe) if !in_compat_syscall() => probe,
        _ => {
            // Any other call that write-locked the mm (the catch-all noted it).
            mm_lock::syscall_returned(
                pid_tgid as u32,
                regs.nr,
                args,
                ctx.arg::<i64>(1),
                user_regs,
                copy,
            );
            return 0;
        }
    };
    let Some(task) = emit::task_past_tgid(pid_tgid) else {
        return 0;
    };
    // SAFETY: reads of our own globals; volatile so the loader's values are seen.
    let (entry_times, gate) = unsafe {
        (
            core::ptr::read_volatile(&ENTRY_TIMES) != 0,
            core::ptr::read_volatile(&SYSCALL_GATE) != 0,
        )
    };
    let enter_ts_ns = if gate {
        // SAFETY: a plain lookup, copied out; only this thread writes its key.
        let mark = unsafe { CALLS.get(task.tid) }.copied();
        let place = EXIT_PLACES + copy;
        let (done, ts) = match mark {
            // An earlier sys_exit copy reported this call.
            Some(m) if m.place >= EXIT_PLACES && m.place < place => (true, 0),
            Some(m) if m.place < EXIT_PLACES => (false, m.enter_ts_ns),
            // Every sys_enter copy was skipped (or the call began before we attached):
            // still reported, without an entry time.
            _ => (false, 0),
        };
        let _ = CALLS.insert(
            task.tid,
            CallMark {
                enter_ts_ns: 0,
                nr: regs.nr,
                place,
                _pad: 0,
            },
            0,
        );
        if done {
            return 0;
        }
        if entry_times { ts } else { 0 }
    } else if entry_times {
        let ts = ENTERED
            .get_ptr(task.tid)
            // SAFETY: the map value lives while the lookup holds it.
            .map(|ts| unsafe { *ts })
            .unwrap_or(0);
        let _ = ENTERED.remove(task.tid);
        ts
    } else {
        0
    };
    let times = CallTimes {
        enter_ts_ns,
        lock_ts_ns: mm_lock::lock_time(task.tid, true),
    };
    // Stop even when the record is lost: verify must not let the process run ahead.
    emit::stop_if_verifying();
    let header = emit::header(EventKind::Syscall, probe, &task);
    let ret = ctx.arg::<i64>(1);
    if probe == Probe::Mmap {
        emit_mmap(header, times, args, ret, user_regs, copy);
        return 0;
    }
    let Some(mut record) = stack::Record::<SyscallEvent>::start(probe, user_regs, copy) else {
        return 0;
    };
    // SAFETY: a record of this type, ours until submit; written field by field, in place
    // (a whole value would be built on the stack first).
    unsafe { fill_call(record.as_mut_ptr(), header, times, args, ret) };
    record.submit(true);
    0
}

/// When a call entered and when it first held its mm's write lock.
#[derive(Clone, Copy)]
struct CallTimes {
    enter_ts_ns: u64,
    lock_ts_ns: u64,
}

/// Writes a `SyscallEvent` in place (`args` in the syscall convention's order).
///
/// # Safety
/// `event` must be writable.
#[inline(always)]
unsafe fn fill_call(
    event: *mut SyscallEvent,
    header: mmap_trace_common::EventHeader,
    times: CallTimes,
    args: [u64; 6],
    ret: i64,
) {
    // SAFETY: the caller's contract.
    unsafe {
        (*event).header = header;
        (*event).enter_ts_ns = times.enter_ts_ns;
        (*event).lock_ts_ns = times.lock_ts_ns;
        (*event).args = args;
        (*event).ret = ret;
    }
}

/// An mmap and, for a successful file mapping, the file its fd names as the call returns
/// (the process may close the fd before userspace reads the record).
#[inline(always)]
fn emit_mmap(
    mut header: mmap_trace_common::EventHeader,
    times: CallTimes,
    args: [u64; 6],
    ret: i64,
    user_regs: *const pt_regs,
    slot: u32,
) {
    header.kind = EventKind::Mmap as u32;
    let fd = args[4] as i32;
    let maps_file = args[3] & MAP_ANONYMOUS == 0 && fd >= 0 && !(-4095..0).contains(&ret);
    let Some(mut record) = stack::Record::<MmapEvent>::start(Probe::Mmap, user_regs, slot) else {
        return;
    };
    let event = record.as_mut_ptr();
    // SAFETY: `event` points at a record we own until submit; every field is written
    // before submit.
    unsafe {
        fill_call(&raw mut (*event).call, header, times, args, ret);
        match kernel::offsets() {
            Some(offsets) if maps_file => {
                kernel::read_fd_file(fd, &offsets, &mut (*event).file, slot)
            }
            _ => kernel::no_file(&mut (*event).file),
        }
    }
    record.submit(true);
}
