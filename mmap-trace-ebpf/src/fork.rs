//! `sched/sched_process_fork` (raw): a followed process made a child process. The child
//! joins the followed set here, inside the fork, so its first event already passes the
//! filter; the record tells userspace whose address space the child starts from.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use mmap_trace_common::{EventKind, ForkEvent, Probe};

use crate::{
    emit::{self, FOLLOWED},
    kernel, mm_lock,
};

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    let Some(o) = kernel::task_offsets() else {
        return 0;
    };
    let parent: u64 = ctx.arg(0);
    let child: u64 = ctx.arg(1);
    let child_pid: u32 = kernel::read(child, o.tgid);
    if child_pid == 0 || child_pid == task.pid {
        return 0; // a thread: already followed with its process
    }
    if FOLLOWED.insert(child_pid, 1, 0).is_err() {
        emit::count_lost(Probe::Fork); // the followed set is full: the child is not traced
        return 0;
    }
    let parent_mm: u64 = kernel::read(parent, o.mm);
    let child_mm: u64 = kernel::read(child, o.mm);
    if let Some(mut entry) = emit::reserve::<ForkEvent>(Probe::Fork) {
        entry.write(ForkEvent {
            header: emit::header(EventKind::Fork, Probe::Fork, &task),
            child_pid,
            child_tid: kernel::read(child, o.pid),
            shares_mm: u32::from(parent_mm != 0 && parent_mm == child_mm),
            untraced: u32::from(
                emit::verifying()
                    && emit::traced_by_verify(parent, &o)
                    && !emit::traced_by_verify(child, &o),
            ),
            // The parent's clone is still in its call: its entry ends at its exit.
            lock_ts_ns: mm_lock::lock_time(task.tid, false),
        });
        entry.submit(0);
    }
    0
}
