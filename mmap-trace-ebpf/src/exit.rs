//! `sched/sched_process_exit` (raw): a traced process's last thread is leaving. The record
//! lets userspace release what it keeps for the process, and a followed pid leaves the
//! followed set here, so the set holds the living and a reused pid starts untraced.

use aya_ebpf::{
    helpers::generated::bpf_get_current_task, macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use mmap_trace_common::{EventKind, ExitEvent, Probe};

use crate::{
    emit::{self, FOLLOWED},
    kernel,
};

/// `sched_process_exit(struct task_struct *p[, bool group_dead])`, in the exiting task.
/// The prototype's second argument is 6.16+; `signal->live` says the same on every kernel:
/// `do_exit` decrements it before this tracepoint, so 0 means no thread is left. Two
/// threads exiting at once may both see 0: userspace takes the second record as a no-op.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    let Some(o) = kernel::task_offsets() else {
        return 0;
    };
    // SAFETY: helper without preconditions.
    let current = unsafe { bpf_get_current_task() };
    let signal: u64 = kernel::read(current, o.signal);
    let live: i32 = kernel::read(signal, o.signal_live);
    if signal == 0 || live != 0 {
        return 0; // another thread of the process is still running
    }
    // Absent unless followed: removing is the cheaper test.
    let _ = FOLLOWED.remove(task.pid);
    if let Some(mut entry) = emit::reserve::<ExitEvent>(Probe::Exit) {
        entry.write(ExitEvent {
            header: emit::header(EventKind::Exit, Probe::Exit, &task),
        });
        entry.submit(0);
    }
    0
}
