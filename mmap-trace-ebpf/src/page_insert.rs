//! kprobes on the page-insertion family: one `PageInsertEvent` per call, at entry, with
//! the VMA and the first PFN (read from the argument, or from the `struct page *`
//! through the vmemmap: see `PageMap`). One program per probe, one shared body.

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::kprobe, programs::ProbeContext};
use mmap_trace_common::{EventKind, KernelOffsets, PageInsertEvent, PageMap, Probe};

use crate::{emit, kernel};

#[unsafe(no_mangle)]
static PAGE_MAP: PageMap = PageMap {
    vmemmap_base_addr: 0,
    vmemmap: 0,
    page_size: 0,
};

/// The PFN of `struct page *page`, 0 when unknown.
#[inline(always)]
fn page_to_pfn(page: u64) -> u64 {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let map = unsafe { core::ptr::read_volatile(&PAGE_MAP) };
    let base = if map.vmemmap_base_addr != 0 {
        // SAFETY: bpf_probe_read_kernel tolerates bad addresses.
        unsafe { bpf_probe_read_kernel(map.vmemmap_base_addr as *const u64) }.unwrap_or(0)
    } else {
        map.vmemmap
    };
    if page == 0 || base == 0 || map.page_size == 0 || page < base {
        return 0;
    }
    (page - base) / map.page_size
}

/// What one call inserts: (user address, first PFN, pages, kernel or physical address,
/// mmap_action type).
type Insert = (u64, u64, u64, u64, u32);

#[inline(always)]
fn emit(
    ctx: &ProbeContext,
    probe: Probe,
    decode: impl FnOnce(&ProbeContext, &KernelOffsets) -> Insert,
) -> u32 {
    let Some(task) = emit::current_task() else {
        return 0;
    };
    let Some(offsets) = kernel::offsets() else {
        return 0;
    };
    let Some(mut entry) = emit::reserve::<PageInsertEvent>(probe) else {
        return 0;
    };
    let (addr, pfn, pages, kaddr, action) = decode(ctx, &offsets);
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved record we own until submit; every field is
    // written before submit.
    unsafe {
        (*event).header = emit::header(EventKind::PageInsert, probe, &task);
        kernel::read_vma(ctx.arg(0).unwrap_or(0), &offsets, &mut (*event).vma);
        (*event).addr = if probe == Probe::VmIomapMemory {
            (*event).vma.vm_start
        } else {
            addr
        };
        (*event).pfn = pfn;
        (*event).pages = pages;
        (*event).kaddr = kaddr;
        (*event).action = action;
        (*event)._pad = 0;
        // A simple I/O remap maps the region from its page vm_pgoff (vm_iomap_memory's
        // rule), which only the VMA knows.
        if probe == Probe::MmapAction && action == ACTION_SIMPLE_IO_REMAP {
            (*event).addr = (*event).vma.vm_start;
            (*event).pfn += (*event).vma.vm_pgoff;
        }
    }
    entry.submit(0);
    0
}

fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg(n).unwrap_or(0)
}

/// `vm_insert_page(vma, addr, page)`.
#[kprobe]
pub fn vm_insert_page(ctx: ProbeContext) -> u32 {
    emit(&ctx, Probe::VmInsertPage, |c, _| {
        (arg(c, 1), page_to_pfn(arg(c, 2)), 1, 0, 0)
    })
}

/// `vm_insert_pages(vma, addr, struct page **pages, unsigned long *num)`.
#[kprobe]
pub fn vm_insert_pages(ctx: ProbeContext) -> u32 {
    emit(&ctx, Probe::VmInsertPages, |c, _| {
        let first: u64 = kernel::read(arg(c, 2), 0);
        let num: u64 = kernel::read(arg(c, 3), 0);
        (arg(c, 1), page_to_pfn(first), num, 0, 0)
    })
}

/// `vmf_insert_pfn(vma, addr, pfn)` and `vmf_insert_pfn_prot(vma, addr, pfn, prot)`.
#[kprobe]
pub fn vmf_insert_pfn(ctx: ProbeContext) -> u32 {
    emit(&ctx, Probe::VmfInsertPfn, |c, _| {
        (arg(c, 1), arg(c, 2), 1, 0, 0)
    })
}

/// `vmf_insert_mixed(vma, addr, pfn)`: a `pfn_t` before 6.16, whose top 12 bits are
/// flags (PFN_DEV, PFN_MAP…); a plain PFN since. Masking serves both.
#[kprobe]
pub fn vmf_insert_mixed(ctx: ProbeContext) -> u32 {
    emit(&ctx, Probe::VmfInsertMixed, |c, _| {
        (arg(c, 1), arg(c, 2) & ((1 << 52) - 1), 1, 0, 0)
    })
}

/// `vm_iomap_memory(vma, phys_addr_t start, unsigned long len)`: maps the VMA from
/// the region's page `vm_pgoff`.
#[kprobe]
pub fn vm_iomap_memory(ctx: ProbeContext) -> u32 {
    emit(&ctx, Probe::VmIomapMemory, |c, _| {
        let (start, len) = (arg(c, 1), arg(c, 2));
        (0, start >> 12, len.div_ceil(4096), start, 0)
    })
}

/// `remap_vmalloc_range_partial(vma, uaddr, kaddr, pgoff, size)`.
#[kprobe]
pub fn remap_vmalloc_range(ctx: ProbeContext) -> u32 {
    emit(&ctx, Probe::RemapVmallocRange, |c, _| {
        (arg(c, 1), 0, arg(c, 4).div_ceil(4096), arg(c, 2), 0)
    })
}

/// `enum mmap_action_type` values (include/linux/mm_types.h, 7.2).
const ACTION_REMAP_PFN: u32 = 1;
const ACTION_IO_REMAP_PFN: u32 = 2;
const ACTION_SIMPLE_IO_REMAP: u32 = 3;
const ACTION_MAP_KERNEL_PAGES: u32 = 4;

/// `mmap_action_complete(vma, struct mmap_action *action, bool is_compat)` (6.17+):
/// what an `f_op->mmap_prepare` driver asked the kernel to map, at BTF offsets.
#[kprobe]
pub fn mmap_action(ctx: ProbeContext) -> u32 {
    emit(&ctx, Probe::MmapAction, |c, o| {
        let action = arg(c, 1);
        if o.action_type == 0 {
            return (0, 0, 0, 0, 0);
        }
        let ty: u32 = kernel::read(action, o.action_type);
        let field = |offset: u32| -> u64 { kernel::read(action, offset) };
        match ty {
            ACTION_REMAP_PFN | ACTION_IO_REMAP_PFN => (
                field(o.action_remap_start),
                field(o.action_remap_pfn),
                field(o.action_remap_size).div_ceil(4096),
                0,
                ty,
            ),
            ACTION_SIMPLE_IO_REMAP => {
                let phys = field(o.action_ioremap_phys);
                (
                    0,
                    phys >> 12,
                    field(o.action_ioremap_size).div_ceil(4096),
                    phys,
                    ty,
                )
            }
            ACTION_MAP_KERNEL_PAGES => {
                let pages = field(o.action_kernel_pages);
                let pgoff = field(o.action_kernel_pgoff);
                let first: u64 = kernel::read(pages + pgoff * 8, 0);
                (
                    field(o.action_kernel_start),
                    page_to_pfn(first),
                    field(o.action_kernel_nr_pages),
                    0,
                    ty,
                )
            }
            other => (0, 0, 0, 0, other),
        }
    })
}
