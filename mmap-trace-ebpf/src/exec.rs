//! `sched/sched_process_exec`: marks where a traced process replaced its address space
//! (`verify` re-reads /proc/<pid>/maps there). Under `--stacks`, an `ExecImageEvent`
//! follows: the executable and interpreter exec mapped (no mmap event shows them), so
//! their code can be named even after the process is gone.

use aya_ebpf::{
    helpers::generated::bpf_get_current_task, macros::tracepoint, programs::TracePointContext,
};
use mmap_trace_common::{EventKind, ExecEvent, ExecImageEvent, MmOffsets, Probe};

use crate::{emit, kernel, stack};

/// `mm_struct` offsets, set by the loader under `--stacks`.
#[unsafe(no_mangle)]
static MM_OFFSETS: MmOffsets = MmOffsets {
    start_code: 0,
    end_code: 0,
    saved_auxv: 0,
    saved_auxv_len: 0,
    exe_file: 0,
    start_stack: 0,
    _pad: 0,
    valid: 0,
};

/// The `mm_struct` offsets, once the loader set them (`--stacks` only).
#[inline(always)]
pub fn mm_offsets() -> Option<MmOffsets> {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let offsets = unsafe { core::ptr::read_volatile(&MM_OFFSETS) };
    (offsets.valid != 0).then_some(offsets)
}

/// The auxiliary vector's `AT_BASE` (the interpreter's address) and its end, `AT_NULL`.
const AT_BASE: u64 = 7;
const AT_NULL: u64 = 0;
/// Pairs of `saved_auxv` searched for `AT_BASE` (it comes early: ld's order is fixed
/// and AT_BASE is the 9th or so); a bound for the verifier.
const AUXV_PAIRS: u32 = 32;

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
    if stack::wanted() {
        emit_image(&task);
    }
    0
}

#[inline(always)]
fn emit_image(task: &emit::Task) {
    let (Some(mo), Some(to), Some(ko)) = (mm_offsets(), kernel::task_offsets(), kernel::offsets())
    else {
        return;
    };
    // SAFETY: helper without preconditions.
    let current = unsafe { bpf_get_current_task() };
    let mm: u64 = kernel::read(current, to.mm);
    let mut interp_base = 0;
    let pairs = AUXV_PAIRS.min(mo.saved_auxv_len / 2);
    for i in 0..AUXV_PAIRS {
        if i >= pairs {
            break;
        }
        let at = mo.saved_auxv + i * 16;
        let kind: u64 = kernel::read(mm, at);
        if kind == AT_NULL {
            break;
        }
        if kind == AT_BASE {
            interp_base = kernel::read(mm, at + 8);
            break;
        }
    }
    let Some(mut entry) = emit::reserve::<ExecImageEvent>(Probe::Exec) else {
        return;
    };
    let event = entry.as_mut_ptr();
    let exe: u64 = kernel::read(mm, mo.exe_file);
    // SAFETY: `event` is reserved and ours until submit; every field is written.
    unsafe {
        (*event).header = emit::header(EventKind::ExecImage, Probe::Exec, task);
        (*event).start_code = kernel::read(mm, mo.start_code);
        (*event).end_code = kernel::read(mm, mo.end_code);
        (*event).interp_base = interp_base;
        kernel::read_file(exe, &ko, &mut (*event).exe, emit::EXEC_SLOT);
    }
    entry.submit(0);
}
