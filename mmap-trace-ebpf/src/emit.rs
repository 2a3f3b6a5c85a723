//! The ring buffer, the target filter and the per-probe lost-event counters.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
            bpf_get_current_task, bpf_ktime_get_ns,
        },
    },
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use mmap_trace_common::{
    CgroupFilter, EventHeader, EventKind, PROBE_COUNT, Probe, TASK_COMM_LEN, TargetFilter,
    TaskOffsets,
};

/// Userspace sizes it with `--ring-buffer-kib` (default 4 MiB) before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Ring-buffer reservations that failed, per probe (per CPU: no atomics on the hot path).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_COUNT as u32, 0);

/// Set by userspace before load; constant for the verifier.
#[unsafe(no_mangle)]
static FILTER: TargetFilter = TargetFilter {
    tgid: 0,
    match_comm: 0,
    comm: [0; TASK_COMM_LEN],
    tracer_tgid: 0,
    follow_forks: 0,
};

/// The followed descendants of `FILTER.tgid` (tgid → 1), added by the fork program as
/// each is created, so no event between a fork and userspace noticing it is missed.
/// Entries stay until the session ends: a pid is reused only after the kernel's pid space
/// wraps.
#[map]
pub static FOLLOWED: HashMap<u32, u32> = HashMap::with_max_entries(8192, 0);
/// `trace --cgroup`, set by userspace before load (id 0: off).
#[unsafe(no_mangle)]
static CGROUP_FILTER: CgroupFilter = CgroupFilter {
    id: 0,
    level: 0,
    _pad: 0,
};

/// Whether the current task is in the `--cgroup` cgroup or below it: its ancestor at the
/// cgroup's level is the cgroup itself. One helper call, no map lookup.
#[inline(always)]
fn cgroup_passes() -> bool {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let filter = unsafe { core::ptr::read_volatile(&CGROUP_FILTER) };
    // SAFETY: helper without memory arguments.
    filter.id == 0
        || unsafe { bpf_get_current_ancestor_cgroup_id(filter.level as i32) } == filter.id
}

/// The current task, when the filter wants it.
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    /// Read once here for both the filter and the record header.
    pub comm: [u8; TASK_COMM_LEN],
}

/// Whether the filter can pass this process (the cheap tgid half of the filter, for
/// hooks that fire for every task on the system before they know it is a call of ours).
#[inline(always)]
pub fn tgid_passes(pid_tgid: u64) -> bool {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let tgid = unsafe { core::ptr::read_volatile(&FILTER.tgid) };
    let current = (pid_tgid >> 32) as u32;
    if tgid == 0 || tgid == current {
        return true;
    }
    // SAFETY: as above. The lookup is paid only when following forks.
    let follow = unsafe { core::ptr::read_volatile(&FILTER.follow_forks) } != 0;
    // SAFETY: a plain lookup.
    follow && unsafe { FOLLOWED.get(current) }.is_some()
}

/// Whether the filter names one process (and maybe its followed children).
#[inline(always)]
pub fn one_process() -> bool {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    (unsafe { core::ptr::read_volatile(&FILTER.tgid) }) != 0
}

#[inline(always)]
pub fn current_task() -> Option<Task> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !tgid_passes(pid_tgid) {
        return None;
    }
    task_past_tgid(pid_tgid)
}

/// [`current_task`] for a hook that has already checked [`tgid_passes`] on `pid_tgid`
/// (`sys_exit`, before anything else): the rest of the filter.
#[inline(always)]
pub fn task_past_tgid(pid_tgid: u64) -> Option<Task> {
    if !cgroup_passes() {
        return None;
    }
    let comm = current_comm();
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let filter = unsafe { core::ptr::read_volatile(&FILTER) };
    if filter.match_comm != 0 && comm != words(filter.comm) {
        return None;
    }
    // SAFETY: two u64s are sixteen bytes.
    let comm = unsafe { core::mem::transmute::<[u64; 2], [u8; TASK_COMM_LEN]>(comm) };
    Some(Task {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm,
    })
}

/// The comm as two words, zeroed by two stores and compared word by word (aya's
/// `bpf_get_current_comm` zeroes 16 bytes one at a time, on every event). Not left
/// uninitialised for the helper: on the 6.1 guest the kprobes then lost most events
/// (a guest stress test caught it).
#[inline(always)]
fn current_comm() -> [u64; 2] {
    let mut comm = [0u64; 2];
    // SAFETY: the helper writes all 16 bytes (NUL-padded, or zeroes on failure).
    unsafe {
        bpf_get_current_comm(comm.as_mut_ptr().cast(), TASK_COMM_LEN as u32);
    }
    comm
}

#[inline(always)]
fn words(comm: [u8; TASK_COMM_LEN]) -> [u64; 2] {
    // SAFETY: sixteen bytes are two u64s.
    unsafe { core::mem::transmute(comm) }
}

/// The current task whatever the filter says (the catch-all's record of another task
/// locking a traced process's mm).
#[inline(always)]
pub fn any_task() -> Option<Task> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: two u64s are sixteen bytes.
    let comm = unsafe { core::mem::transmute::<[u64; 2], [u8; TASK_COMM_LEN]>(current_comm()) };
    Some(Task {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm,
    })
}

/// Reserves a record of type `T` for `probe`, counting the loss when the buffer is full.
#[inline(always)]
pub fn reserve<T: 'static>(probe: Probe) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_lost(probe);
    }
    entry
}

/// Per-CPU scratch buffers (path.rs, stack.rs) have one slot per program that may be
/// running on a CPU at once. The kernel never runs one program twice at once on a CPU
/// (its recursion guard), so a slot per program is the program's own even where
/// tracepoints run BPF preemptible (7.x) and another task's run can come between two of
/// its steps: the gated copies of `sys_exit` take slots 0–3 by copy (syscalls.rs), the
/// catch-all's copies 4–7 ([`MM_LOCK_SLOT`] + copy), exec [`EXEC_SLOT`], and the kprobes,
/// which run with preemption off and so never between each other's steps,
/// [`OTHER_SLOT`].
pub const SCRATCH_SLOTS: u32 = 10;
/// The catch-all's first slot.
pub const MM_LOCK_SLOT: u32 = 4;
/// The exec tracepoint's slot.
pub const EXEC_SLOT: u32 = 8;
/// The scratch slot of the programs that run with preemption off (the kprobes).
pub const OTHER_SLOT: u32 = 9;

/// Counts an event of `probe` that could not be reported.
#[inline(always)]
pub fn count_lost(probe: Probe) {
    if let Some(lost) = LOST.get_ptr_mut(probe as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *lost += 1 };
    }
}

/// The reader is woken once the buffer holds this many bytes (or at once under
/// `verify`); below it, records wait for the reader's periodic drain (trace.rs). Set by
/// the loader (an eighth of the ring) so the hot path does not query the ring's size.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

/// Submits a reserved record, held by its pointer (stack.rs keeps the pointer, not the
/// entry: see `stack::Record`). `batched`, for a high-rate record (one per traced
/// syscall): without waking the reader, except for a record that fills the buffer past a multiple of `WAKEUP_BYTES`. A wake-up per
/// record costs the traced task an irq_work and a cross-CPU wake-up on every call: that,
/// not the copy, was most of the tracing overhead (issue 6). Only crossings wake: while
/// the reader is on its way, the records after it must not queue the irq_work again. Every
/// multiple (up to 8 per ring) rather than the first only: the first crossing can fall to
/// a record of another probe, or to another CPU's reservation, and must not leave the
/// reader to its 10 ms timer.
/// Not `batched`: the kernel's default (wake a reader that has caught up).
///
/// # Safety
/// `record` must be a reservation of this ring not yet submitted or discarded.
#[inline(always)]
pub unsafe fn submit_reserved<T>(record: *mut T, batched: bool) {
    let flags = if batched {
        // Includes this record (reserved, not yet submitted).
        wakeup_flags(core::mem::size_of::<T>(), 0)
    } else {
        0
    };
    // SAFETY: the caller's contract.
    unsafe { aya_ebpf::helpers::generated::bpf_ringbuf_submit(record.cast(), flags) };
}

/// [`submit_reserved`] for a record held as its ring-buffer entry, `batched`.
#[inline(always)]
pub fn submit_batched<T>(entry: RingBufEntry<T>) {
    entry.submit(wakeup_flags(core::mem::size_of::<T>(), 0));
}

/// The flags for a high-rate record of `size` bytes (see [`submit_reserved`]);
/// `pending`: bytes of it not yet in the ring's available data (0 for a reserved
/// record, `size` for one about to be output).
#[inline(always)]
fn wakeup_flags(size: usize, pending: usize) -> u64 {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let verifying = unsafe { core::ptr::read_volatile(&FILTER.tracer_tgid) } != 0;
    // SAFETY: as above. At least 1: the loader sets an eighth of the ring.
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) }.max(1);
    // With the 8-byte ring header of each record.
    let queued = if pending > 0 {
        (pending.next_multiple_of(8) + 8) as u64
    } else {
        0
    };
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64) + queued;
    let record = (size.next_multiple_of(8) + 8) as u64;
    if verifying {
        // The thread stops right after a high-rate record, and its ptrace stop wakes verify
        // (SIGCHLD): a ring wake-up on top would only cost the thread another irq_work.
        BPF_RB_NO_WAKEUP as u64
    } else if avail / wakeup_bytes != avail.saturating_sub(record) / wakeup_bytes {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Copies a record of variable length (`--stacks`: an event with as much of the stack
/// as holds frames) into the ring, counting the loss when it is full. `batched`: woken
/// as [`submit_reserved`] wakes; otherwise at once.
#[inline(always)]
pub fn output(probe: Probe, record: &[u8], batched: bool) {
    let flags = if batched {
        wakeup_flags(record.len(), record.len())
    } else {
        0
    };
    if EVENTS.output::<[u8]>(record, flags).is_err() {
        count_lost(probe);
    }
}

#[inline(always)]
pub fn header(kind: EventKind, probe: Probe, task: &Task) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        probe: probe as u32,
        pid: task.pid,
        tid: task.tid,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        comm: task.comm,
        // SAFETY: helper without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

/// Whether `verify` runs: the target stops after each event, and the catch-all notes
/// when each call took the mm's write lock.
#[inline(always)]
pub fn verifying() -> bool {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    unsafe { core::ptr::read_volatile(&FILTER.tracer_tgid) != 0 }
}

/// `task_struct.ptrace`: the task has a tracer, its `parent` (include/linux/ptrace.h).
const PT_PTRACED: u32 = 1;

/// Under `verify`, stops this thread once it returns to user mode (after the syscall or
/// fault that is running now). Thread-directed: under ptrace the signal must reach this
/// thread, which verify then holds in signal-delivery-stop and resumes without the
/// signal; a process-directed SIGSTOP could be taken by another thread. Only a thread
/// verify traces: any other would really stop, and stay stopped (a sanitizer's
/// CLONE_UNTRACED helper, whose process then waits for it forever).
#[inline(always)]
pub fn stop_if_verifying() {
    if !verifying() {
        return;
    }
    if let Some(o) = crate::kernel::task_offsets() {
        // SAFETY: helper without preconditions.
        let task = unsafe { bpf_get_current_task() };
        if !traced_by_verify(task, &o) {
            return;
        }
    }
    // SAFETY: helper without memory arguments; SIGSTOP is 19 on every Linux arch we build for.
    unsafe { aya_ebpf::helpers::generated::bpf_send_signal_thread(19) };
}

/// Whether verify ptraces `task` (a `struct task_struct *`): its tracer is `parent`.
#[inline(always)]
pub fn traced_by_verify(task: u64, o: &TaskOffsets) -> bool {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let tracer = unsafe { core::ptr::read_volatile(&FILTER.tracer_tgid) };
    let ptrace: u32 = crate::kernel::read(task, o.ptrace);
    let parent: u64 = crate::kernel::read(task, o.parent);
    let parent_tgid: u32 = crate::kernel::read(parent, o.tgid);
    tracer != 0 && ptrace & PT_PTRACED != 0 && parent_tgid == tracer
}
