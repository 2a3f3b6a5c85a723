//! `sched/sched_process_exec`: marks where a traced process replaced its address space
//! (`verify` re-reads /proc/<pid>/maps there).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use mmap_trace_common::{EventKind, ExecEvent, Probe};

use crate::emit;

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    emit::stop_if_verifying();
    if let Some(mut entry) = emit::reserve::<ExecEvent>(Probe::Exec) {
        entry.write(ExecEvent {
            header: emit::header(EventKind::Exec, Probe::Exec, &task),
        });
        entry.submit(0);
    }
    0
}
