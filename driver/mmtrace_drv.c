// SPDX-License-Identifier: GPL-2.0
/*
 * mmtrace_drv - the device mmap-trace proves end to end.
 *
 * Three misc character devices whose mmap() hands the caller's page tables
 * the pages of a kernel buffer of npages pages, in three mapping styles:
 *
 *  /dev/mmtrace-kmalloc  physically contiguous buffer, one remap_pfn_range()
 *                        for the whole request; serves MAP_SHARED and
 *                        MAP_PRIVATE (copy-on-write, see README).
 *  /dev/mmtrace-vmalloc  virtually contiguous buffer, one single-page
 *                        remap_pfn_range() per page (vmalloc_to_pfn());
 *                        MAP_SHARED only.
 *  /dev/mmtrace-fault    vmalloc buffer mapped lazily: mmap() only records
 *                        the VMA; vm_ops->fault inserts each page on the
 *                        first touch with vm_insert_page(); serves
 *                        MAP_SHARED and MAP_PRIVATE (copy-on-write).
 *
 * Every buffer page starts with the bytes aa bb cc dd after load.
 * read()/write() copy from/to the same buffer, so a write() is visible
 * through a shared mapping and a store through it is visible to read().
 *
 * Ground truth, for tests and for the tracer (formats in README.md):
 *  /sys/kernel/debug/mmtrace/<dev>_pfns       (0400) buffer page -> PFN
 *  /sys/kernel/debug/mmtrace/<dev>_pagetable  (0400) the reader's own
 *                                             mappings of <dev>: address -> PFN
 *  /sys/kernel/debug/mmtrace/pagetable        (0600) any address range of the
 *                                             reader, written first: address -> PFN
 *  /sys/kernel/debug/mmtrace/counters         (0400) live mappings, faults,
 *                                             reserved pages
 *  /proc/mmtrace_vmas                         (0444) the reader's own VMAs
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/capability.h>
#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/overflow.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/vmalloc.h>

/*
 * The kmalloc-path buffer is one physically contiguous allocation, so it is
 * bounded by the page allocator's largest block. 1024 pages (4 MiB with
 * 4 KiB pages) fits every x86-64 configuration (MAX_ORDER >= 11).
 */
#define MMTRACE_MAX_NPAGES 1024

static unsigned int npages = 16;
module_param(npages, uint, 0444);
MODULE_PARM_DESC(npages, "Pages per buffer (1.." __stringify(MMTRACE_MAX_NPAGES) ", default 16)");

static const u8 mmtrace_pattern[] = { 0xaa, 0xbb, 0xcc, 0xdd };

/* Pages we have marked reserved and not yet cleared, over all buffers. */
static atomic_t mmtrace_reserved_pages = ATOMIC_INIT(0);

struct mmtrace_dev {
	const char *name;		/* "kmalloc", "vmalloc", "fault": file prefix */
	struct miscdevice misc;
	const struct vm_operations_struct *vm_ops;	/* of the VMAs it maps */
	void *buf;			/* npages pages, page aligned */
	atomic_t live_maps;		/* VMAs currently mapping this buffer */
	atomic_t faults;		/* pages inserted by vm_ops->fault */
};

static struct dentry *mmtrace_debugfs;
static struct proc_dir_entry *mmtrace_proc;

static size_t mmtrace_buf_size(void)
{
	return (size_t)npages << PAGE_SHIFT;
}

static struct mmtrace_dev *mmtrace_dev_of(struct file *file)
{
	/* misc_open() stores the miscdevice in private_data. */
	return container_of(file->private_data, struct mmtrace_dev, misc);
}

/* The struct page behind page @idx of @dev's buffer, for either allocator. */
static struct page *mmtrace_page(const struct mmtrace_dev *dev, unsigned long idx)
{
	void *addr = dev->buf + (idx << PAGE_SHIFT);

	return is_vmalloc_addr(addr) ? vmalloc_to_page(addr) : virt_to_page(addr);
}

/* --- mappings ----------------------------------------------------------- */

static void mmtrace_vm_open(struct vm_area_struct *vma)
{
	struct mmtrace_dev *dev = vma->vm_private_data;
	int live = atomic_inc_return(&dev->live_maps);

	pr_debug("%s: open vma %#lx-%#lx, %d live\n",
		 dev->name, vma->vm_start, vma->vm_end, live);
}

static void mmtrace_vm_close(struct vm_area_struct *vma)
{
	struct mmtrace_dev *dev = vma->vm_private_data;
	int live = atomic_dec_return(&dev->live_maps);

	pr_debug("%s: close vma %#lx-%#lx, %d live\n",
		 dev->name, vma->vm_start, vma->vm_end, live);
}

/* The eager devices: every page is mapped by mmap() itself. */
static const struct vm_operations_struct mmtrace_vm_ops = {
	.open = mmtrace_vm_open,
	.close = mmtrace_vm_close,
};

/*
 * The lazy device: a page is mapped on the first touch.
 *
 * vm_insert_page() rather than vmf_insert_pfn(): the buffer pages have a
 * struct page, so the VMA can be VM_MIXEDMAP instead of VM_PFNMAP, which
 *  - serves MAP_PRIVATE: vmf_insert_pfn() BUG()s on a copy-on-write PFNMAP
 *    VMA, while the pages of a MIXEDMAP VMA are normal pages that the
 *    write-fault path copies;
 *  - takes a reference and an rmap entry per inserted page, so the core mm,
 *    /proc/<pid>/pagemap and GUP see ordinary pages;
 *  - shows the second mapping family beside the two remap_pfn_range()
 *    devices (PFNMAP, no struct page involved).
 * mm/memory.c allows vm_insert_page() from a fault handler once VM_MIXEDMAP
 * is set, which mmap() does. The PTE takes vma->vm_page_prot: on a private
 * mapping it is read-only, so the first store copies the page.
 * noinline: the tracer puts a kprobe on this function.
 */
static noinline vm_fault_t mmtrace_fault_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct mmtrace_dev *dev = vma->vm_private_data;
	int ret;

	/* VM_DONTEXPAND keeps the VMA inside the pages mmap() checked. */
	if (vmf->pgoff >= npages)
		return VM_FAULT_SIGBUS;
	ret = vm_insert_page(vma, vmf->address, mmtrace_page(dev, vmf->pgoff));
	/* -EBUSY: another thread of the process inserted it first. */
	if (ret && ret != -EBUSY)
		return vmf_error(ret);
	if (!ret)
		atomic_inc(&dev->faults);
	return VM_FAULT_NOPAGE;
}

static const struct vm_operations_struct mmtrace_fault_vm_ops = {
	.open = mmtrace_vm_open,
	.close = mmtrace_vm_close,
	.fault = mmtrace_fault_fault,
};

/* The device behind @vma if one of ours maps it, else NULL. */
static struct mmtrace_dev *mmtrace_vma_dev(const struct vm_area_struct *vma)
{
	if (vma->vm_ops != &mmtrace_vm_ops && vma->vm_ops != &mmtrace_fault_vm_ops)
		return NULL;
	return vma->vm_private_data;
}

/*
 * Refuse, before anything is mapped, a request that does not fit in the
 * buffer. The kernel has already refused length 0 and, for a character
 * device, a byte offset + length that overflows (file_mmap_ok()); the
 * overflow check here is defence in depth and covers 32-bit mmap2() pgoffs.
 */
static int mmtrace_check_request(struct vm_area_struct *vma)
{
	unsigned long pages = vma_pages(vma);
	unsigned long end;

	if (vma->vm_pgoff >= npages)
		return -ENXIO;
	if (check_add_overflow(vma->vm_pgoff, pages, &end))
		return -EOVERFLOW;
	if (!pages || end > npages)
		return -EINVAL;
	return 0;
}

/* Called once the whole request is mapped: from now on the VMA is counted. */
static void mmtrace_vma_attach(struct mmtrace_dev *dev, struct vm_area_struct *vma)
{
	vma->vm_ops = dev->vm_ops;
	vma->vm_private_data = dev;
	mmtrace_vm_open(vma);
}

/*
 * One remap_pfn_range() for the whole request. On a private mapping the
 * kernel rewrites vm_pgoff to the first PFN and copies a page on the first
 * write to it (see README "MAP_PRIVATE").
 * noinline: the tracer puts a kprobe on this function.
 */
static noinline int mmtrace_kmalloc_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct mmtrace_dev *dev = mmtrace_dev_of(file);
	unsigned long pfn;
	int ret;

	ret = mmtrace_check_request(vma);
	if (ret)
		goto refuse;
	pfn = page_to_pfn(mmtrace_page(dev, vma->vm_pgoff));
	ret = remap_pfn_range(vma, vma->vm_start, pfn,
			      vma->vm_end - vma->vm_start, vma->vm_page_prot);
	if (ret)
		goto refuse;
	mmtrace_vma_attach(dev, vma);
	return 0;

refuse:
	pr_debug("kmalloc: mmap pgoff %#lx len %#lx refused: %d\n",
		 vma->vm_pgoff, vma->vm_end - vma->vm_start, ret);
	return ret;
}

/*
 * One single-page remap_pfn_range() per page. remap_pfn_range() refuses a
 * partial range of a copy-on-write (private) VMA, so private mappings are
 * refused up front rather than half-served. If a later page fails, the
 * kernel's mmap error path unmaps what the earlier calls installed.
 * noinline: the tracer puts a kprobe on this function.
 */
static noinline int mmtrace_vmalloc_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct mmtrace_dev *dev = mmtrace_dev_of(file);
	unsigned long addr, idx;
	int ret;

	ret = mmtrace_check_request(vma);
	if (ret)
		goto refuse;
	/*
	 * Copy-on-write (MAP_PRIVATE, may write) only: a MAP_SHARED mapping of a
	 * read-only fd has VM_SHARED cleared by do_mmap() but can never COW.
	 */
	if (is_cow_mapping(vma->vm_flags)) {
		ret = -EINVAL;
		goto refuse;
	}
	for (addr = vma->vm_start, idx = vma->vm_pgoff; addr < vma->vm_end;
	     addr += PAGE_SIZE, idx++) {
		ret = remap_pfn_range(vma, addr,
				      vmalloc_to_pfn(dev->buf + (idx << PAGE_SHIFT)),
				      PAGE_SIZE, vma->vm_page_prot);
		if (ret)
			goto refuse;
	}
	mmtrace_vma_attach(dev, vma);
	return 0;

refuse:
	pr_debug("vmalloc: mmap pgoff %#lx len %#lx refused: %d\n",
		 vma->vm_pgoff, vma->vm_end - vma->vm_start, ret);
	return ret;
}

/*
 * vm_flags_set() (6.3+) asserts the VMA write lock; before it, vm_flags was
 * written directly. checkpatch warns about LINUX_VERSION_CODE: see
 * mmtrace_follow_pfn() for why this module tests it.
 */
static void mmtrace_vm_flags_set(struct vm_area_struct *vma, vm_flags_t flags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_set(vma, flags);
#else
	vma->vm_flags |= flags;
#endif
}

/*
 * Maps nothing: records the VMA and lets mmtrace_fault_fault() insert each
 * page when it is first touched. VM_DONTEXPAND: mremap() cannot grow the
 * VMA past the checked request; VM_DONTDUMP as remap_pfn_range() sets it.
 * noinline: the tracer puts a kprobe on this function.
 */
static noinline int mmtrace_fault_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct mmtrace_dev *dev = mmtrace_dev_of(file);
	int ret;

	ret = mmtrace_check_request(vma);
	if (ret) {
		pr_debug("fault: mmap pgoff %#lx len %#lx refused: %d\n",
			 vma->vm_pgoff, vma->vm_end - vma->vm_start, ret);
		return ret;
	}
	mmtrace_vm_flags_set(vma, VM_MIXEDMAP | VM_DONTEXPAND | VM_DONTDUMP);
	mmtrace_vma_attach(dev, vma);
	return 0;
}

/* --- read/write ---------------------------------------------------------- */

static ssize_t mmtrace_read(struct file *file, char __user *ubuf, size_t count,
			    loff_t *ppos)
{
	/* Checks *ppos < 0, clamps to the buffer, returns 0 at or past the end. */
	return simple_read_from_buffer(ubuf, count, ppos, mmtrace_dev_of(file)->buf,
				       mmtrace_buf_size());
}

static ssize_t mmtrace_write(struct file *file, const char __user *ubuf,
			     size_t count, loff_t *ppos)
{
	loff_t pos = *ppos;

	/* A write that starts at or past the end cannot store a byte: say so. */
	if (count && pos >= 0 && (u64)pos >= mmtrace_buf_size())
		return -ENOSPC;
	return simple_write_to_buffer(mmtrace_dev_of(file)->buf, mmtrace_buf_size(),
				      ppos, ubuf, count);
}

static loff_t mmtrace_llseek(struct file *file, loff_t offset, int whence)
{
	return fixed_size_llseek(file, offset, whence, mmtrace_buf_size());
}

static const struct file_operations mmtrace_kmalloc_fops = {
	.owner = THIS_MODULE,	/* a live mapping's vm_file pins the module */
	.llseek = mmtrace_llseek,
	.read = mmtrace_read,
	.write = mmtrace_write,
	.mmap = mmtrace_kmalloc_mmap,
};

static const struct file_operations mmtrace_vmalloc_fops = {
	.owner = THIS_MODULE,
	.llseek = mmtrace_llseek,
	.read = mmtrace_read,
	.write = mmtrace_write,
	.mmap = mmtrace_vmalloc_mmap,
};

static const struct file_operations mmtrace_fault_fops = {
	.owner = THIS_MODULE,
	.llseek = mmtrace_llseek,
	.read = mmtrace_read,
	.write = mmtrace_write,
	.mmap = mmtrace_fault_mmap,
};

static struct mmtrace_dev mmtrace_devs[] = {
	{
		.name = "kmalloc",
		.misc = {
			.minor = MISC_DYNAMIC_MINOR,
			.name = "mmtrace-kmalloc",
			.fops = &mmtrace_kmalloc_fops,
			.mode = 0600,
		},
		.vm_ops = &mmtrace_vm_ops,
	},
	{
		.name = "vmalloc",
		.misc = {
			.minor = MISC_DYNAMIC_MINOR,
			.name = "mmtrace-vmalloc",
			.fops = &mmtrace_vmalloc_fops,
			.mode = 0600,
		},
		.vm_ops = &mmtrace_vm_ops,
	},
	{
		.name = "fault",
		.misc = {
			.minor = MISC_DYNAMIC_MINOR,
			.name = "mmtrace-fault",
			.fops = &mmtrace_fault_fops,
			.mode = 0600,
		},
		.vm_ops = &mmtrace_fault_vm_ops,
	},
};

/* --- ground truth ------------------------------------------------------- */

static int mmtrace_pfns_show(struct seq_file *m, void *v)
{
	const struct mmtrace_dev *dev = m->private;
	unsigned long idx;

	for (idx = 0; idx < npages; idx++)
		seq_printf(m, "%lu %lx\n", idx, page_to_pfn(mmtrace_page(dev, idx)));
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(mmtrace_pfns);

/*
 * What the page table of @vma holds for @addr (mmap lock held).
 *
 * checkpatch warns about LINUX_VERSION_CODE (and, wrongly, about the order
 * of its comparison with KERNEL_VERSION()); this is an out-of-tree module
 * built against the guest's 6.1 and newer kernels, and the page-table walk
 * API changed under it: follow_pfn() was removed in 6.10 (follow_pte() then
 * took the VMA) and follow_pte() gave way to follow_pfnmap_start() in 6.12.
 */
static int mmtrace_follow_pfn(struct vm_area_struct *vma, unsigned long addr,
			      unsigned long *pfn)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
	struct follow_pfnmap_args args = { .vma = vma, .address = addr };
	int ret = follow_pfnmap_start(&args);

	if (ret)
		return ret;
	*pfn = args.pfn;
	follow_pfnmap_end(&args);
	return 0;
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 10, 0)
	spinlock_t *ptl;	/* page-table lock, taken by follow_pte() */
	pte_t *ptep;
	int ret = follow_pte(vma, addr, &ptep, &ptl);

	if (ret)
		return ret;
	*pfn = pte_pfn(ptep_get(ptep));
	pte_unmap_unlock(ptep, ptl);
	return 0;
#else
	return follow_pfn(vma, addr, pfn);
#endif
}

/*
 * The page get_user_pages() finds at @addr of the current process without
 * faulting anything in (FOLL_NOFAULT), with a reference; mmap lock held.
 * The vmas argument went away in 6.5 (see mmtrace_follow_pfn() for why
 * this module tests LINUX_VERSION_CODE).
 */
static long mmtrace_get_page(unsigned long addr, struct page **page)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0)
	return get_user_pages(addr, 1, FOLL_NOFAULT, page);
#else
	return get_user_pages(addr, 1, FOLL_NOFAULT, page, NULL);
#endif
}

/*
 * What the page table holds for @addr in @vma, a VMA of the current process
 * (mmap lock held), whoever mapped it. The walks a module may call differ
 * by VMA: the follow_pfn() family serves only VM_IO/VM_PFNMAP VMAs, and
 * pte_offset_map_lock() is not exported from 6.5 on. Every other VMA maps
 * struct pages, which GUP finds (GUP-fast would not do: from 6.12 it refuses
 * a page without a ->mapping, such as a driver's vmalloc page). A PTE GUP
 * cannot take reads as not present: a special PFN of a VM_MIXEDMAP VMA
 * (vmf_insert_mixed() of memory without struct page), a PROT_NONE or
 * write-only page, a swapped-out page.
 */
static int mmtrace_pte_pfn(struct vm_area_struct *vma, unsigned long addr,
			   unsigned long *pfn)
{
	struct page *page;

	if (vma->vm_flags & (VM_IO | VM_PFNMAP))
		return mmtrace_follow_pfn(vma, addr, pfn);
	if (vma->vm_mm != current->mm || mmtrace_get_page(addr, &page) != 1)
		return -EFAULT;
	*pfn = page_to_pfn(page);
	put_page(page);
	return 0;
}

static void mmtrace_show_pte(struct seq_file *m, struct vm_area_struct *vma,
			     unsigned long addr)
{
	unsigned long pfn;

	if (vma && !mmtrace_pte_pfn(vma, addr, &pfn))
		seq_printf(m, "%lx %lx\n", addr, pfn);
	else
		seq_printf(m, "%lx -\n", addr);
}

/* The reading process's mappings of one device: "<addr hex> <pfn hex|->". */
static int mmtrace_pagetable_show(struct seq_file *m, void *v)
{
	VMA_ITERATOR(vmi, current->mm, 0);
	struct mmtrace_dev *dev = m->private;
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	unsigned long addr;
	int ret;

	if (!mm)
		return 0;
	ret = mmap_read_lock_killable(mm);
	if (ret)
		return ret;
	for_each_vma(vmi, vma) {
		if (mmtrace_vma_dev(vma) != dev)
			continue;
		for (addr = vma->vm_start; addr < vma->vm_end; addr += PAGE_SIZE)
			mmtrace_show_pte(m, vma, addr);
	}
	mmap_read_unlock(mm);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(mmtrace_pagetable);

/*
 * /sys/kernel/debug/mmtrace/pagetable: the page tables of the calling
 * process for any range it names, whoever mapped it (a driver we did not
 * write included). write() "<start hex> <end hex>" on an fd, then read()
 * the same fd from offset 0: one "<addr> <pfn|->" line per page, "-" also
 * where no VMA is. At most MMTRACE_MAX_RANGE_PAGES pages per range.
 */
#define MMTRACE_MAX_RANGE_PAGES 65536UL

struct mmtrace_range {
	unsigned long start, end;	/* page aligned, start <= end */
};

static int mmtrace_range_show(struct seq_file *m, void *v)
{
	const struct mmtrace_range *range = m->private;
	struct mm_struct *mm = current->mm;
	unsigned long addr;
	int ret;

	if (!mm)
		return 0;
	ret = mmap_read_lock_killable(mm);
	if (ret)
		return ret;
	for (addr = range->start; addr < range->end; addr += PAGE_SIZE)
		mmtrace_show_pte(m, vma_lookup(mm, addr), addr);
	mmap_read_unlock(mm);
	return 0;
}

static int mmtrace_range_open(struct inode *inode, struct file *file)
{
	struct mmtrace_range *range;
	int ret;

	/* PFNs are physical addresses: as for /proc/<pid>/pagemap. */
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	range = kzalloc(sizeof(*range), GFP_KERNEL);
	if (!range)
		return -ENOMEM;
	ret = single_open(file, mmtrace_range_show, range);
	if (ret)
		kfree(range);
	return ret;
}

static int mmtrace_range_release(struct inode *inode, struct file *file)
{
	kfree(((struct seq_file *)file->private_data)->private);
	return single_release(inode, file);
}

static ssize_t mmtrace_range_write(struct file *file, const char __user *ubuf,
				   size_t count, loff_t *ppos)
{
	struct mmtrace_range *range = ((struct seq_file *)file->private_data)->private;
	unsigned long start, end;
	char kbuf[48];

	if (!count || count >= sizeof(kbuf))
		return -EINVAL;
	if (copy_from_user(kbuf, ubuf, count))
		return -EFAULT;
	kbuf[count] = '\0';
	if (sscanf(kbuf, "%lx %lx", &start, &end) != 2 || start > end)
		return -EINVAL;
	start &= PAGE_MASK;
	if (end > TASK_SIZE_MAX)
		return -EINVAL;
	end = PAGE_ALIGN(end);
	if ((end - start) >> PAGE_SHIFT > MMTRACE_MAX_RANGE_PAGES)
		return -E2BIG;
	range->start = start;
	range->end = end;
	/* The position is left at 0: the next read() walks the new range. */
	return count;
}

static const struct file_operations mmtrace_range_fops = {
	.owner = THIS_MODULE,
	.open = mmtrace_range_open,
	.read = seq_read,
	.write = mmtrace_range_write,
	.llseek = seq_lseek,
	.release = mmtrace_range_release,
};

static int mmtrace_counters_show(struct seq_file *m, void *v)
{
	size_t i;

	seq_printf(m, "npages %u\n", npages);
	for (i = 0; i < ARRAY_SIZE(mmtrace_devs); i++) {
		seq_printf(m, "%s_live_maps %d\n", mmtrace_devs[i].name,
			   atomic_read(&mmtrace_devs[i].live_maps));
		seq_printf(m, "%s_faults %d\n", mmtrace_devs[i].name,
			   atomic_read(&mmtrace_devs[i].faults));
	}
	seq_printf(m, "reserved_pages %d\n", atomic_read(&mmtrace_reserved_pages));
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(mmtrace_counters);

/*
 * /proc/mmtrace_vmas: the reading process's VMAs, walked with the maple-tree
 * iterator: "<vm_start> <vm_end> <vm_flags> <vm_pgoff> <path|->" in hex,
 * then "total <bytes mapped>". Only the reader's own address space is
 * shown, as in /proc/self/maps, so it is world-readable.
 */
static int mmtrace_vmas_show(struct seq_file *m, void *v)
{
	VMA_ITERATOR(vmi, current->mm, 0);
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	unsigned long total = 0;
	int ret;

	if (!mm)
		return 0;
	ret = mmap_read_lock_killable(mm);
	if (ret)
		return ret;
	for_each_vma(vmi, vma) {
		seq_printf(m, "%lx %lx %lx %lx ", vma->vm_start, vma->vm_end,
			   (unsigned long)vma->vm_flags, vma->vm_pgoff);
		if (vma->vm_file)
			seq_file_path(m, vma->vm_file, "\n");
		else
			seq_putc(m, '-');
		seq_putc(m, '\n');
		total += vma->vm_end - vma->vm_start;
	}
	mmap_read_unlock(mm);
	seq_printf(m, "total %lu\n", total);
	return 0;
}

/* --- buffers ------------------------------------------------------------- */

static void *mmtrace_buf_alloc(const struct mmtrace_dev *dev)
{
	/*
	 * alloc_pages_exact() rather than kmalloc(): kmalloc() of this size
	 * returns a compound page, and PG_reserved may not be set on the pages
	 * of a compound page. The result is the same physically contiguous,
	 * page aligned buffer the lab builds from kmalloc((npages + 2) pages).
	 */
	if (dev->misc.fops == &mmtrace_kmalloc_fops)
		return alloc_pages_exact(mmtrace_buf_size(), GFP_KERNEL | __GFP_ZERO);
	return vzalloc(mmtrace_buf_size());
}

static void mmtrace_buf_free(struct mmtrace_dev *dev)
{
	unsigned long idx;

	for (idx = 0; idx < npages; idx++) {
		ClearPageReserved(mmtrace_page(dev, idx));
		atomic_dec(&mmtrace_reserved_pages);
	}
	if (is_vmalloc_addr(dev->buf))
		vfree(dev->buf);
	else
		free_pages_exact(dev->buf, mmtrace_buf_size());
	dev->buf = NULL;
}

static int mmtrace_buf_init(struct mmtrace_dev *dev)
{
	unsigned long idx;

	dev->buf = mmtrace_buf_alloc(dev);
	if (!dev->buf)
		return -ENOMEM;
	for (idx = 0; idx < npages; idx++) {
		/* Reserved: not swappable, not reclaimable, while it is mapped. */
		SetPageReserved(mmtrace_page(dev, idx));
		atomic_inc(&mmtrace_reserved_pages);
		memcpy(dev->buf + (idx << PAGE_SHIFT), mmtrace_pattern,
		       sizeof(mmtrace_pattern));
	}
	return 0;
}

static void mmtrace_debugfs_init(void)
{
	char name[32];
	size_t i;

	/* debugfs failures are not fatal: the files are diagnostics. */
	mmtrace_debugfs = debugfs_create_dir("mmtrace", NULL);
	for (i = 0; i < ARRAY_SIZE(mmtrace_devs); i++) {
		snprintf(name, sizeof(name), "%s_pfns", mmtrace_devs[i].name);
		debugfs_create_file(name, 0400, mmtrace_debugfs, &mmtrace_devs[i],
				    &mmtrace_pfns_fops);
		snprintf(name, sizeof(name), "%s_pagetable", mmtrace_devs[i].name);
		debugfs_create_file(name, 0400, mmtrace_debugfs, &mmtrace_devs[i],
				    &mmtrace_pagetable_fops);
	}
	debugfs_create_file("counters", 0400, mmtrace_debugfs, NULL,
			    &mmtrace_counters_fops);
	debugfs_create_file("pagetable", 0600, mmtrace_debugfs, NULL,
			    &mmtrace_range_fops);
}

/* --- module -------------------------------------------------------------- */

static int __init mmtrace_init(void)
{
	size_t nbufs = 0, nregistered = 0;
	int ret;

	if (!npages || npages > MMTRACE_MAX_NPAGES) {
		pr_err("npages=%u refused: must be 1..%d\n", npages, MMTRACE_MAX_NPAGES);
		return -EINVAL;
	}

	for (; nbufs < ARRAY_SIZE(mmtrace_devs); nbufs++) {
		ret = mmtrace_buf_init(&mmtrace_devs[nbufs]);
		if (ret)
			goto err_free_bufs;
	}

	mmtrace_debugfs_init();
	mmtrace_proc = proc_create_single("mmtrace_vmas", 0444, NULL, mmtrace_vmas_show);
	if (!mmtrace_proc) {
		ret = -ENOMEM;
		goto err_remove_debugfs;
	}

	/* Devices last: nothing can be opened before the buffers are ready. */
	for (; nregistered < ARRAY_SIZE(mmtrace_devs); nregistered++) {
		ret = misc_register(&mmtrace_devs[nregistered].misc);
		if (ret)
			goto err_deregister;
	}

	pr_info("loaded: %u pages per buffer\n", npages);
	return 0;

err_deregister:
	while (nregistered--)
		misc_deregister(&mmtrace_devs[nregistered].misc);
	proc_remove(mmtrace_proc);
err_remove_debugfs:
	debugfs_remove(mmtrace_debugfs);
err_free_bufs:
	while (nbufs--)
		mmtrace_buf_free(&mmtrace_devs[nbufs]);
	pr_err("load failed: %d\n", ret);
	return ret;
}

static void __exit mmtrace_exit(void)
{
	size_t i = ARRAY_SIZE(mmtrace_devs);

	/* No mapping can be live here: each one pins the module via vm_file. */
	while (i--)
		misc_deregister(&mmtrace_devs[i].misc);
	proc_remove(mmtrace_proc);
	debugfs_remove(mmtrace_debugfs);
	for (i = ARRAY_SIZE(mmtrace_devs); i--; )
		mmtrace_buf_free(&mmtrace_devs[i]);
	pr_info("unloaded\n");
}

module_init(mmtrace_init);
module_exit(mmtrace_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("mmap-trace");
MODULE_DESCRIPTION("Eager (remap_pfn_range) and lazy (fault) mmap devices with page-table ground truth");
