//! The catch-all: `mmap_lock/mmap_lock_acquire_returned` with `write && success` on a
//! traced process's mm. Whatever the cause, a change to what /proc/<pid>/maps prints
//! happens under the mm's write lock, so this sees every one (research: VMA-CHANGES.md):
//!
//! - a syscall of the process other than the five with probes of their own (shmat,
//!   madvise, mlock, pkey_mprotect, …): noted per thread here and reported by `sys_exit`
//!   as the call returns, with its arguments and result;
//! - a page fault outside a syscall (stack and MAP_GROWSDOWN growth): reported now; the
//!   thread stops (under verify) as the fault returns to user mode;
//! - another task on this mm (khugepaged, kdamond, a parent writing it): reported now,
//!   keyed by the mm pointer (the task's own `current->mm` is another one).
//!
//! The lock is keyed by the mm pointer (argument 0), not `current->mm`, for that third
//! case. Its `write` argument moved: 6.1–6.12 pass `(mm, memcg_path, write, success)`,
//! later kernels `(mm, write, success)`; the loader reads which from BTF.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_task, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_task_pt_regs,
        },
    },
    macros::{btf_tracepoint, map},
    maps::{LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use mmap_trace_common::{EventKind, MmChangeCause, MmChangeEvent, Probe};

use crate::{arch, emit, kernel, stack, syscalls};

/// Non-zero when this program is attached: `sys_exit` then reports the syscalls noted in
/// `WROTE_MM`.
#[unsafe(no_mangle)]
pub static CATCH_ALL: u32 = 0;

/// A syscall that write-locked its own mm, from its first write lock to its exit.
#[repr(C)]
#[derive(Clone, Copy)]
struct LockedCall {
    /// When it first held the write lock: under `verify`, the order of the changes of
    /// concurrent threads (one writer at a time), handed to its record at exit.
    lock_ts_ns: u64,
    /// Whether it was an ia32 call.
    compat: u32,
    /// Non-zero: a call without a probe of its own, which the catch-all reports at exit;
    /// zero: only its lock time is kept (a probed call, or a fork under `verify`).
    report: u32,
}

/// Threads inside a syscall that write-locked their mm. LRU: a thread killed in the call
/// never reaches its exit.
#[map]
static WROTE_MM: LruHashMap<u32, LockedCall> = LruHashMap::with_max_entries(16384, 0);

/// When the call `tid` is in first held its mm's write lock (0: it did not, or this is
/// not `verify`); `take` ends the call's entry (its exit).
#[inline(always)]
pub fn lock_time(tid: u32, take: bool) -> u64 {
    if !emit::verifying() {
        return 0;
    }
    // SAFETY: a plain lookup, copied out before any removal.
    let Some(call) = (unsafe { WROTE_MM.get(tid) }).copied() else {
        return 0;
    };
    if take {
        let _ = WROTE_MM.remove(tid);
    }
    call.lock_ts_ns
}

/// The mms of traced processes (mm pointer → tgid), learnt when their own tasks lock
/// them, so a lock taken by another task can be attributed. LRU: a freed mm's entry ages
/// out; a reused address can at worst cause one extra, empty checkpoint.
#[map]
static TARGET_MMS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(8192, 0);

/// The mm this CPU last learnt into `TARGET_MMS`, and how many locks of it skipped the
/// hash lookup since: a process's own locks (~1.5 per mmap or munmap call) skip it, which
/// had been a third of this program's time (57 → 50–53 ns a run). Every
/// [`RELEARN_EVERY`]th lock looks again: a lookup is what keeps a live mm's entry recent
/// in the LRU map, and re-inserts it if it was evicted all the same. Only a cache: a run
/// on this CPU between another's two steps (7.x) at worst costs one more lookup.
#[repr(C)]
#[derive(Clone, Copy)]
struct LearntMm {
    mm: u64,
    skipped: u64,
}

#[map]
static LEARNT_MM: PerCpuArray<LearntMm> = PerCpuArray::with_max_entries(1, 0);

const RELEARN_EVERY: u64 = 64;

/// Notes that the traced process `tgid` owns `mm`.
#[inline(always)]
fn learn(mm: u64, tgid: u32) {
    let Some(last) = LEARNT_MM.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; a racing write on it is harmless (see LEARNT_MM).
    unsafe {
        if (*last).mm == mm && (*last).skipped < RELEARN_EVERY {
            (*last).skipped += 1;
            return;
        }
    }
    // SAFETY: a plain lookup.
    if unsafe { TARGET_MMS.get(mm) }.is_none() {
        let _ = TARGET_MMS.insert(mm, tgid, 0);
    }
    // SAFETY: as above.
    unsafe { *last = LearntMm { mm, skipped: 0 } };
}

/// The gate (syscalls.rs) for the catch-all: on kernels that run tracepoint programs
/// preemptible (7.x skipped this one too: 2 runs in a guest_verify of the shmat
/// scenario), four copies of it are attached, and each thread's last copy to run is
/// kept here. A copy that finds an earlier copy's mark ran for this same lock does
/// nothing; the first copy to run after the last one's mark handles the lock.
#[map]
static LOCK_MARKS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// Whether this copy is the first of the gated copies to run for the lock being taken
/// now (always, ungated). Only this thread writes its key, one copy at a time.
#[inline(always)]
fn first_copy(tid: u32, copy: u32) -> bool {
    if !syscalls::gated() {
        return true;
    }
    // SAFETY: a plain lookup, copied out.
    let mark = unsafe { LOCK_MARKS.get(tid) }.copied();
    let _ = LOCK_MARKS.insert(tid, copy, 0);
    !matches!(mark, Some(m) if m < copy)
}

/// `(mm, write, success)`: kernels since the late-2024 change (6.13+, the 6.18 host).
/// The verifier refuses a context read at a variable offset or past the prototype, so
/// each prototype has its program and the loader loads the one BTF names.
#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn mmap_lock_acquire_returned(ctx: BtfTracePointContext) -> i32 {
    write_locked(ctx.arg(0), ctx.arg(1), ctx.arg(2), 0)
}

/// The gate's spare copies (see `LOCK_MARKS`); 7.x has only this prototype.
#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn mmap_lock_acquire_returned_2(ctx: BtfTracePointContext) -> i32 {
    write_locked(ctx.arg(0), ctx.arg(1), ctx.arg(2), 1)
}

#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn mmap_lock_acquire_returned_3(ctx: BtfTracePointContext) -> i32 {
    write_locked(ctx.arg(0), ctx.arg(1), ctx.arg(2), 2)
}

#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn mmap_lock_acquire_returned_4(ctx: BtfTracePointContext) -> i32 {
    write_locked(ctx.arg(0), ctx.arg(1), ctx.arg(2), 3)
}

/// `(mm, memcg_path, write, success)`: 6.1–6.12.
#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn mmap_lock_acquire_returned_memcg(ctx: BtfTracePointContext) -> i32 {
    write_locked(ctx.arg(0), ctx.arg(2), ctx.arg(3), 0)
}

/// `copy`: 0, or 1–3 for the gate's spares.
#[inline(always)]
fn write_locked(mm: u64, write: u64, success: u64, copy: u32) -> i32 {
    // bools: only the low byte is defined.
    if write & 0xff == 0 || success & 0xff == 0 {
        return 0;
    }
    let Some(o) = kernel::task_offsets() else {
        return 0;
    };
    // SAFETY: helper without preconditions.
    let current = unsafe { bpf_get_current_task() };
    let own: u64 = kernel::read(current, o.mm);
    let pid_tgid = bpf_get_current_pid_tgid();
    if own == mm {
        if !emit::tgid_passes(pid_tgid) || !first_copy(pid_tgid as u32, copy) {
            return 0;
        }
        if emit::one_process() {
            learn(mm, (pid_tgid >> 32) as u32);
        }
        // SAFETY: the BTF task pointer is what the helper wants.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
        let nr = arch::syscall_nr(regs);
        if nr >= 0 {
            let compat = syscalls::in_compat_syscall();
            // mmap, munmap…: their own event says what changed; exec and exit too.
            let report =
                compat || !(syscalls::traced(nr as u64).is_some() || arch::leaves_own_maps(nr));
            // Under verify the probed calls and forks keep their lock time as well.
            if !report && !(emit::verifying() && !arch::is_exec_or_exit(nr)) {
                return 0;
            }
            let tid = pid_tgid as u32;
            // SAFETY: a plain lookup. A call's first write lock is the one kept.
            if unsafe { WROTE_MM.get(tid) }.is_some() {
                return 0;
            }
            let call = LockedCall {
                // SAFETY: helper without preconditions.
                lock_ts_ns: unsafe { bpf_ktime_get_ns() },
                compat: u32::from(compat),
                report: u32::from(report),
            };
            let _ = WROTE_MM.insert(tid, call, 0);
            return 0;
        }
        // Not in a syscall: a fault growing a stack. Stop once it returns to user mode.
        let Some(task) = emit::current_task() else {
            return 0;
        };
        emit::stop_if_verifying();
        let header = emit::header(EventKind::MmChange, Probe::MmLock, &task);
        emit_change(
            header,
            header.ts_ns,
            MmChangeCause::Fault,
            task.pid,
            -1,
            [0; 6],
            0,
            0,
            regs as *const _,
            emit::MM_LOCK_SLOT + copy,
        );
        return 0;
    }
    // Another task locked a traced process's mm. Only for one process (tree): with every
    // process or a name as the target, the owner's own filter cannot be checked here.
    if !emit::one_process() {
        return 0;
    }
    // SAFETY: a plain lookup.
    let Some(owner) = (unsafe { TARGET_MMS.get(mm) }).copied() else {
        return 0;
    };
    if !first_copy(pid_tgid as u32, copy) {
        return 0;
    }
    let Some(task) = emit::any_task() else {
        return 0;
    };
    let mut header = emit::header(EventKind::MmChange, Probe::MmLock, &task);
    header.pid = owner;
    // Another task's registers say nothing of the owner's code: no stack.
    emit_change(
        header,
        header.ts_ns,
        MmChangeCause::Kernel,
        task.pid,
        -1,
        [0; 6],
        0,
        0,
        core::ptr::null(),
        emit::MM_LOCK_SLOT + copy,
    );
    0
}

/// A syscall noted in `WROTE_MM` returns: report it (called by `sys_exit` for calls
/// without a probe of their own).
#[inline(always)]
pub fn syscall_returned(
    tid: u32,
    nr: u64,
    args: [u64; 6],
    ret: i64,
    user_regs: *const aya_ebpf::bindings::pt_regs,
    slot: u32,
) {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    if unsafe { core::ptr::read_volatile(&CATCH_ALL) } == 0 {
        return;
    }
    // SAFETY: a plain lookup; the value is copied out before the removal.
    let Some(call) = (unsafe { WROTE_MM.get(tid) }).copied() else {
        return;
    };
    let _ = WROTE_MM.remove(tid);
    if call.report == 0 {
        return; // a fork's lock time, read by the fork probe
    }
    let Some(task) = emit::current_task() else {
        return;
    };
    emit::stop_if_verifying();
    emit_change(
        emit::header(EventKind::MmChange, Probe::MmLock, &task),
        if emit::verifying() {
            call.lock_ts_ns
        } else {
            0
        },
        MmChangeCause::Syscall,
        task.pid,
        nr as i64,
        args,
        ret,
        call.compat,
        user_regs,
        slot,
    );
}

/// `user_regs`: the locking task's user registers when it is the owner (its stack is
/// appended under --stacks), null otherwise; `slot`: the caller's scratch slot.
#[expect(
    clippy::too_many_arguments,
    reason = "the record's fields, each written once"
)]
#[inline(always)]
fn emit_change(
    header: mmap_trace_common::EventHeader,
    lock_ts_ns: u64,
    cause: MmChangeCause,
    locker_pid: u32,
    nr: i64,
    args: [u64; 6],
    ret: i64,
    compat: u32,
    user_regs: *const aya_ebpf::bindings::pt_regs,
    slot: u32,
) {
    let Some(mut record) = stack::Record::<MmChangeEvent>::start(Probe::MmLock, user_regs, slot)
    else {
        return;
    };
    let event = record.as_mut_ptr();
    // SAFETY: a record of this type, ours until submit; written field by field, in place
    // (a whole value would be built on the stack first: the 6.1 verifier caps sys_exit's
    // call chain at 512 bytes).
    unsafe {
        (*event).header = header;
        (*event).cause = cause as u32;
        (*event).locker_pid = locker_pid;
        (*event).nr = nr;
        (*event).args = args;
        (*event).ret = ret;
        (*event).compat = compat;
        (*event)._pad = 0;
        (*event).lock_ts_ns = lock_ts_ns;
    }
    record.submit(false);
}
