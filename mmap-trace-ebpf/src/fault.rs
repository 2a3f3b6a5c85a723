//! `page_fault_user` and `page_fault_kernel` (raw tracepoints, x86): a page fault of a
//! traced process on a user address. One `FaultEvent` per fault, at the fault's entry.
//! arm64 has no such tracepoints: there the perf software event PERF_COUNT_SW_PAGE_FAULTS
//! (sampled every fault, one per CPU) is the source, fired once per fault exception at
//! the same place of `do_page_fault` x86 fires its own; it carries the address and the
//! registers but not the ESR, so the access is unknown (`pf::ACCESS_UNKNOWN`).
//!
//! Raw rather than `exceptions:page_fault_*` trace events: those fill a perf record per
//! fault before the program runs (issue 6 measured that cost for syscalls). The kernel
//! variant fires for faults the kernel takes on user memory inside a syscall (read(2)
//! into a fresh buffer); only user addresses are kept (kernel addresses are not a
//! mapping's).

use aya_ebpf::{
    helpers::generated::bpf_get_current_task, macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use mmap_trace_common::{EventKind, FaultEvent, Probe};

use crate::{emit, kernel};

/// `offsetof(struct pt_regs, ip)`, from BTF; set by the loader.
#[unsafe(no_mangle)]
static PT_REGS_IP: u32 = 0;

/// `offsetof(struct task_struct, maj_flt)`, from BTF; set by the loader.
#[unsafe(no_mangle)]
static TASK_MAJ_FLT: u32 = 0;

/// x86-64 user addresses are below 2^47 (4-level paging) or 2^56 (5-level); kernel
/// addresses have the top bit set.
const USER_LIMIT: u64 = 1 << 63;

/// `page_fault_user(unsigned long address, struct pt_regs *regs, unsigned long error_code)`.
#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn page_fault_user(ctx: RawTracePointContext) -> i32 {
    fault(&ctx, 0)
}

/// `page_fault_kernel`: the same prototype.
#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn page_fault_kernel(ctx: RawTracePointContext) -> i32 {
    fault(&ctx, 1)
}

#[inline(always)]
fn fault(ctx: &RawTracePointContext, in_kernel: u32) -> i32 {
    let address: u64 = ctx.arg(0);
    let regs: u64 = ctx.arg(1);
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let ip_offset = unsafe { core::ptr::read_volatile(&PT_REGS_IP) };
    emit_fault(
        address,
        kernel::read(regs, ip_offset),
        ctx.arg(2),
        in_kernel,
    )
}

/// `PERF_COUNT_SW_PAGE_FAULTS` (arm64): the fault address and the exception's registers.
#[cfg(bpf_target_arch = "aarch64")]
#[aya_ebpf::macros::perf_event]
pub fn page_fault_perf(ctx: aya_ebpf::programs::PerfEventContext) -> i32 {
    // SAFETY: the perf event's context, read field by field (direct context loads).
    let (address, ip, pstate) = unsafe {
        let data = ctx.ctx;
        ((*data).addr, (*data).regs.pc, (*data).regs.pstate)
    };
    // PSR_MODE_MASK: 0 is EL0t, user mode.
    let in_kernel = u32::from(pstate & 0xf != 0);
    let user = if in_kernel == 0 {
        mmap_trace_common::pf::USER
    } else {
        0
    };
    emit_fault(
        address,
        ip,
        mmap_trace_common::pf::ACCESS_UNKNOWN | user,
        in_kernel,
    )
}

#[inline(always)]
fn emit_fault(address: u64, ip: u64, error_code: u64, in_kernel: u32) -> i32 {
    if address >= USER_LIMIT {
        return 0;
    }
    let Some(task) = emit::current_task() else {
        return 0;
    };
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let maj_flt_offset = unsafe { core::ptr::read_volatile(&TASK_MAJ_FLT) };
    // SAFETY: helper without preconditions.
    let current = unsafe { bpf_get_current_task() };
    let event = FaultEvent {
        header: emit::header(EventKind::Fault, Probe::Fault, &task),
        address,
        ip,
        error_code,
        in_kernel,
        _pad: 0,
        maj_flt: if maj_flt_offset == 0 {
            0
        } else {
            kernel::read(current, maj_flt_offset)
        },
    };
    if let Some(mut entry) = emit::reserve::<FaultEvent>(Probe::Fault) {
        entry.write(event);
        emit::submit_batched(entry);
    }
    0
}
