//! Event records shared by the eBPF programs and the CLI.
//!
//! Every record starts with an [`EventHeader`]; its `kind` says which struct follows.
//! All types are plain `#[repr(C)]` data with explicit padding so both sides agree on
//! the layout byte for byte (the decoder checks sizes before reading).
#![no_std]

pub const TASK_COMM_LEN: usize = 16;
/// Bytes of a backing file's names kept per event: the dentry's name and, where the probe
/// walks the path, its ancestors' (see [`FileId::name`]). Components that do not fit are
/// left out and the record says so ([`FILE_PATH_TRUNCATED`]).
pub const FILE_NAME_LEN: usize = 256;
/// At most this many steps of the path walk (one per component, one per mount crossed);
/// a deeper path is cut, leaf side kept, and marked [`FILE_PATH_TRUNCATED`].
pub const FILE_PATH_MAX_DEPTH: usize = 32;

/// [`FileId::flags`]: `name` holds every component up to the root: the full path.
pub const FILE_PATH_FULL: u16 = 1;
/// [`FileId::flags`]: the walk stopped before the root (depth or length): `name` holds
/// the components nearest the leaf only.
pub const FILE_PATH_TRUNCATED: u16 = 2;
/// [`FileId::flags`]: the dentry was unlinked (or never linked: memfd, a shared mapping
/// of /dev/zero) when the probe read it; /proc/<pid>/maps adds " (deleted)".
pub const FILE_UNLINKED: u16 = 4;

/// What follows the header.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Syscall = 1,
    MmapRegion = 2,
    RemapPfn = 3,
    DriverMmap = 4,
    Exec = 5,
    PageCache = 6,
    Mmap = 7,
    Fork = 8,
    MmChange = 9,
    /// `--stacks`: where exec put the new executable and its interpreter (follows the
    /// [`ExecEvent`]).
    ExecImage = 12,
    Fault = 10,
    Rss = 11,
    /// One call of the page-insertion family (vm_insert_page and kin).
    PageInsert = 14,
    /// A traced process ended (its last thread exited).
    Exit = 15,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Syscall),
            2 => Some(Self::MmapRegion),
            3 => Some(Self::RemapPfn),
            4 => Some(Self::DriverMmap),
            5 => Some(Self::Exec),
            6 => Some(Self::PageCache),
            7 => Some(Self::Mmap),
            8 => Some(Self::Fork),
            9 => Some(Self::MmChange),
            12 => Some(Self::ExecImage),
            10 => Some(Self::Fault),
            11 => Some(Self::Rss),
            14 => Some(Self::PageInsert),
            15 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// One entry per attachable probe; indexes the kernel's lost-event counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Mmap = 0,
    Munmap = 1,
    Mprotect = 2,
    Mremap = 3,
    Brk = 4,
    MmapRegion = 5,
    RemapPfnRange = 6,
    DriverMmap = 7,
    /// `sched/sched_process_exec`: the address space was replaced.
    Exec = 8,
    /// `filemap/mm_filemap_add_to_page_cache`: a file page got its PFN (opt-in for
    /// `trace`; `verify` uses it to check present file pages against pagemap).
    PageCache = 9,
    /// The catch-all: `mmap_lock/mmap_lock_acquire_returned` with the write lock taken on
    /// a traced process's mm, by any syscall (reported at its exit), a fault (stack growth)
    /// or another task (a kernel thread, a process acting on it).
    MmLock = 10,
    /// `sched/sched_process_fork` of a followed process (`--follow-forks`, verify).
    Fork = 11,
    /// `page_fault_user` (and `page_fault_kernel` on a user address), raw: a page fault of
    /// a traced process (`trace --faults`).
    Fault = 12,
    /// `kmem/rss_stat`: a traced process's resident-set counter of one type changed by a
    /// quantum (`trace --faults`).
    Rss = 13,
    /// The page-insertion family, a kprobe each, one [`PageInsertEvent`] per call.
    /// `vm_insert_page(vma, addr, page)`: one page, usually from a `.fault` handler.
    VmInsertPage = 15,
    /// `vm_insert_pages(vma, addr, pages, &num)`: a batch.
    VmInsertPages = 16,
    /// `vmf_insert_pfn(vma, addr, pfn)` and `vmf_insert_pfn_prot(…, prot)`.
    VmfInsertPfn = 17,
    /// `vmf_insert_mixed(vma, addr, pfn)`.
    VmfInsertMixed = 18,
    /// `vm_iomap_memory(vma, phys, len)`.
    VmIomapMemory = 19,
    /// `remap_vmalloc_range_partial(vma, uaddr, kaddr, pgoff, size)`, which
    /// `remap_vmalloc_range` calls.
    RemapVmallocRange = 20,
    /// `mmap_action_complete(vma, action, compat)` (6.17+): the kernel completing what an
    /// `f_op->mmap_prepare` driver asked for (remap, I/O remap, kernel pages).
    MmapAction = 21,
    /// `sched/sched_process_exit` of a traced process's last thread: its state can be
    /// released (and a followed pid forgotten, so the kernel's set stays bounded).
    Exit = 22,
}

/// One past the highest [`Probe`] number (the lost-event counters are indexed by it).
pub const PROBE_COUNT: usize = 23;

impl Probe {
    /// Every probe, in number order (numbers 12..=14 are reserved and unused here).
    pub const ALL: [Probe; 22] = [
        Probe::Mmap,
        Probe::Munmap,
        Probe::Mprotect,
        Probe::Mremap,
        Probe::Brk,
        Probe::MmapRegion,
        Probe::RemapPfnRange,
        Probe::DriverMmap,
        Probe::Exec,
        Probe::PageCache,
        Probe::MmLock,
        Probe::Fork,
        Probe::Fault,
        Probe::Rss,
        Probe::VmInsertPage,
        Probe::VmInsertPages,
        Probe::VmfInsertPfn,
        Probe::VmfInsertMixed,
        Probe::VmIomapMemory,
        Probe::RemapVmallocRange,
        Probe::MmapAction,
        Probe::Exit,
    ];

    /// The syscall a syscall probe reports, in the numbering of the architecture this is
    /// built for (None for the other probes): x86-64's, or arm64's asm-generic one. The
    /// eBPF side's `arch::probe_of` is the same table read the other way.
    pub const fn syscall_nr(self) -> Option<u64> {
        #[cfg(target_arch = "aarch64")]
        const NRS: [u64; 5] = [222, 226, 215, 214, 216];
        #[cfg(not(target_arch = "aarch64"))]
        const NRS: [u64; 5] = [9, 10, 11, 12, 25];
        Some(match self {
            Probe::Mmap => NRS[0],
            Probe::Mprotect => NRS[1],
            Probe::Munmap => NRS[2],
            Probe::Brk => NRS[3],
            Probe::Mremap => NRS[4],
            _ => return None,
        })
    }

    /// The name users pass to `--probes` and see in summaries.
    pub const fn name(self) -> &'static str {
        match self {
            Probe::Mmap => "mmap",
            Probe::Munmap => "munmap",
            Probe::Mprotect => "mprotect",
            Probe::Mremap => "mremap",
            Probe::Brk => "brk",
            Probe::MmapRegion => "mmap_region",
            Probe::RemapPfnRange => "remap_pfn_range",
            Probe::DriverMmap => "driver_mmap",
            Probe::Exec => "exec",
            Probe::PageCache => "page_cache",
            Probe::MmLock => "mm_lock",
            Probe::Fork => "fork",
            Probe::Fault => "fault",
            Probe::Rss => "rss",
            Probe::VmInsertPage => "vm_insert_page",
            Probe::VmInsertPages => "vm_insert_pages",
            Probe::VmfInsertPfn => "vmf_insert_pfn",
            Probe::VmfInsertMixed => "vmf_insert_mixed",
            Probe::VmIomapMemory => "vm_iomap_memory",
            Probe::RemapVmallocRange => "remap_vmalloc_range",
            Probe::MmapAction => "mmap_action",
            Probe::Exit => "exit",
        }
    }

    pub const fn from_u32(v: u32) -> Option<Self> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == v {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// Syscall probes are tracepoints (available everywhere).
    pub const fn is_syscall(self) -> bool {
        (self as u32) <= Probe::Brk as u32
    }

    /// Kernel-function probes need kprobes, which some kernels lack.
    pub const fn is_kprobe(self) -> bool {
        matches!(
            self,
            Probe::MmapRegion | Probe::RemapPfnRange | Probe::DriverMmap
        ) || self.is_page_insert()
    }

    /// The page-insertion family (one [`PageInsertEvent`] per call).
    pub const fn is_page_insert(self) -> bool {
        matches!(
            self,
            Probe::VmInsertPage
                | Probe::VmInsertPages
                | Probe::VmfInsertPfn
                | Probe::VmfInsertMixed
                | Probe::VmIomapMemory
                | Probe::RemapVmallocRange
                | Probe::MmapAction
        )
    }

    /// The kernel functions a kernel-function probe attaches to (all present ones; the
    /// second of a pair is the variant the first may call, see `trace --help`). The same
    /// names from 6.1 to 7.2: since 6.13 `mmap_region()` (mm/vma.c) only checks the flags
    /// and calls `__mmap_region()` with the same arguments and return value, so its
    /// kprobe and kretprobe still see every mapping (checked in the 6.12.95 and 7.2.13
    /// guests).
    pub const fn kernel_functions(self) -> &'static [&'static str] {
        match self {
            Probe::MmapRegion => &["mmap_region"],
            Probe::RemapPfnRange => &["remap_pfn_range"],
            Probe::VmInsertPage => &["vm_insert_page"],
            Probe::VmInsertPages => &["vm_insert_pages"],
            Probe::VmfInsertPfn => &["vmf_insert_pfn", "vmf_insert_pfn_prot"],
            Probe::VmfInsertMixed => &["vmf_insert_mixed"],
            Probe::VmIomapMemory => &["vm_iomap_memory"],
            Probe::RemapVmallocRange => &["remap_vmalloc_range_partial"],
            Probe::MmapAction => &["mmap_action_complete"],
            _ => &[],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`].
    pub kind: u32,
    /// The [`Probe`] that produced the record.
    pub probe: u32,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// `bpf_ktime_get_ns()` when the record was emitted (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub comm: [u8; TASK_COMM_LEN],
    /// `bpf_get_current_cgroup_id()`: the task's cgroup v2 id (the cgroup directory's
    /// inode number; 1 is the root, and every task of a cgroup v1-only system).
    pub cgroup_id: u64,
}

/// One syscall, entry and exit joined in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallEvent {
    pub header: EventHeader,
    /// `bpf_ktime_get_ns()` at entry; `header.ts_ns` is the exit.
    pub enter_ts_ns: u64,
    /// `bpf_ktime_get_ns()` when the call first held its mm's write lock (`verify` only;
    /// 0: it never took it, or it is not known). Every change to a process's mappings
    /// happens under that lock, so these times order the changes of concurrent threads
    /// exactly as the kernel made them.
    pub lock_ts_ns: u64,
    /// The six raw syscall arguments, as the tracepoint saw them.
    pub args: [u64; 6],
    /// The return value (negative errno on failure).
    pub ret: i64,
}

/// An mmap call, and the file its fd named as the call returned: the kernel's identity
/// of what was mapped, which userspace cannot recover once the fd is closed (ld.so
/// closes each library right after mapping it). `file` is all zero for anonymous memory,
/// a failed call, or a kernel whose BTF gave no offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MmapEvent {
    pub call: SyscallEvent,
    pub file: FileId,
}

/// The file behind a mapping, as far as the kernel says (all zero for anonymous memory).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileId {
    /// `inode->i_sb->s_dev` (kernel encoding: major << 20 | minor).
    pub dev: u32,
    /// `FILE_PATH_*` and [`FILE_UNLINKED`] bits (0: `name` is the leaf name only).
    pub flags: u16,
    /// Bytes of `name` in use (each component with its NUL).
    pub name_len: u16,
    pub ino: u64,
    /// The dentry's name (the last path component), NUL-terminated; where the probe walks
    /// the path (`flags` not 0), its ancestors' names follow, leaf to root, each
    /// NUL-terminated, crossing mounts at their mount points (the root itself has none).
    /// Names are bytes, not text: any byte but NUL and '/'.
    pub name: [u8; FILE_NAME_LEN],
}

impl FileId {
    /// False for the all-zero identity the probes write for anonymous memory.
    pub const fn is_file(&self) -> bool {
        self.ino != 0 || self.dev != 0
    }
}

/// The fields of a `struct vm_area_struct` that mmap-trace reports.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VmaFields {
    /// Kernel address of the `vm_area_struct` (joins events about the same VMA).
    pub vma: u64,
    pub vm_start: u64,
    pub vm_end: u64,
    pub vm_flags: u64,
    pub vm_pgoff: u64,
    pub file: FileId,
}

/// `mmap_region(file, addr, len, vm_flags, pgoff, uf)`: entry and return joined.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MmapRegionEvent {
    pub header: EventHeader,
    pub addr: u64,
    pub len: u64,
    pub vm_flags: u64,
    pub pgoff: u64,
    /// The mapped address, or a negative errno.
    pub ret: i64,
    pub file: FileId,
    /// The file's `f_op->mmap`, the function that maps it: what `verify-driver --device`
    /// names through /proc/kallsyms. 0: anonymous, none or unknown.
    pub mmap_hook: u64,
    /// The file's `f_op->mmap_prepare` (6.17+: the driver describes the mapping in a
    /// `vm_area_desc` and the kernel completes it, see [`Probe::MmapAction`]); 0: none.
    pub mmap_prepare_hook: u64,
}

/// `remap_pfn_range(vma, addr, pfn, size, prot)` at entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RemapPfnEvent {
    pub header: EventHeader,
    pub vma: VmaFields,
    pub addr: u64,
    pub pfn: u64,
    pub size: u64,
    /// `pgprot_val(prot)`.
    pub prot: u64,
}

/// One call of the page-insertion family, at entry (the [`Probe`] says which function).
/// Fields a function does not take are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PageInsertEvent {
    pub header: EventHeader,
    pub vma: VmaFields,
    /// The first user address (`vm_iomap_memory`: the VMA's start).
    pub addr: u64,
    /// The first PFN: the argument, or computed from the `struct page *` (vmemmap);
    /// 0 for `remap_vmalloc_range` (its pages come as `vm_insert_page` events).
    pub pfn: u64,
    /// Pages asked for (`vm_insert_pages`: `*num` at entry).
    pub pages: u64,
    /// `remap_vmalloc_range`: the vmalloc address; `vm_iomap_memory` and a simple I/O
    /// remap `mmap_action`: the physical address; else 0.
    pub kaddr: u64,
    /// `mmap_action`: the action's `enum mmap_action_type` value ([`MMAP_ACTION_NAMES`]);
    /// 0 for the other probes.
    pub action: u32,
    pub _pad: u32,
}

/// `enum mmap_action_type` (include/linux/mm_types.h, 7.2), by value.
pub const MMAP_ACTION_NAMES: [&str; 5] = [
    "nothing",
    "remap_pfn",
    "io_remap_pfn",
    "simple_io_remap",
    "map_kernel_pages",
];

/// How the probes turn a `struct page *` into a PFN on x86-64 (SPARSEMEM_VMEMMAP):
/// `(page - *vmemmap_base) / page_size`. Set by the loader from /proc/kallsyms and BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageMap {
    /// The address of the kernel's `vmemmap_base` variable (0: use `vmemmap`).
    pub vmemmap_base_addr: u64,
    /// The vmemmap start when the kernel has no `vmemmap_base` (fixed layout).
    pub vmemmap: u64,
    /// `sizeof(struct page)`; 0: no conversion (PFNs read as 0).
    pub page_size: u64,
}

/// The driver's `mmap(file, vma)` file operation: the VMA as received and as returned.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DriverMmapEvent {
    pub header: EventHeader,
    pub before: VmaFields,
    pub after: VmaFields,
    pub ret: i64,
}

/// A followed process forked (or cloned a process, not a thread).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    /// The parent (the task that called fork/clone/vfork).
    pub header: EventHeader,
    /// The child's tgid and tid (equal: a new process).
    pub child_pid: u32,
    pub child_tid: u32,
    /// Non-zero when the child shares the parent's mm (`CLONE_VM` without a thread:
    /// vfork, `posix_spawn`): its changes are the parent's until it execs.
    pub shares_mm: u32,
    /// Non-zero (`verify`): verify traces the parent but not the child, made with
    /// CLONE_UNTRACED (how a sanitizer's leak checker makes the helper that ptraces its
    /// own process's threads): the child is never held still.
    pub untraced: u32,
    /// When the fork write-locked the parent's mm to copy it (`verify` only; 0: not
    /// known, or a shared mm): the child starts as the parent was then.
    pub lock_ts_ns: u64,
}

/// What took the write lock of a traced process's mm.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmChangeCause {
    /// A syscall of the process itself other than the five with probes of their own;
    /// reported as it returns, with its number, arguments and result.
    Syscall = 1,
    /// A page fault of the process outside any syscall (stack or MAP_GROWSDOWN growth).
    Fault = 2,
    /// Another task: a kernel thread (khugepaged, kdamond), or a process acting on this
    /// one's mm (fork's parent, process_madvise, ptrace pokes).
    Kernel = 3,
}

impl MmChangeCause {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Syscall),
            2 => Some(Self::Fault),
            3 => Some(Self::Kernel),
            _ => None,
        }
    }
}

/// The catch-all's record: a traced process's mm was write-locked (so its VMAs may have
/// changed). `header.pid` is the process whose mm it is; `header.tid`/`comm` the task
/// that took the lock.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MmChangeEvent {
    pub header: EventHeader,
    /// An [`MmChangeCause`].
    pub cause: u32,
    /// The tgid of the task that took the lock (another process's for `Kernel`).
    pub locker_pid: u32,
    /// The x86-64 syscall number for `Syscall`, -1 otherwise; an ia32 syscall's own
    /// number when `compat` is set.
    pub nr: i64,
    pub args: [u64; 6],
    pub ret: i64,
    /// Non-zero: an ia32 syscall (`nr` is in the ia32 table).
    pub compat: u32,
    pub _pad: u32,
    /// When the change took the mm's write lock (see [`SyscallEvent::lock_ts_ns`]).
    pub lock_ts_ns: u64,
}

/// The traced process called execve: its address space is new.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
}

/// The traced process's last thread left `do_exit`'s count: the process is gone (a
/// zombie at most), and nothing it does follows this record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
}

/// A folio entered the page cache on behalf of the traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PageCacheEvent {
    pub header: EventHeader,
    pub pfn: u64,
    pub ino: u64,
    /// Page index in the file.
    pub index: u64,
    /// `s_dev` (kernel encoding: major << 20 | minor).
    pub dev: u32,
    /// The folio spans 2^order pages (0 where the kernel's record has no order field).
    pub order: u32,
}

/// Where `mm_filemap_add_to_page_cache` keeps its fields on this kernel (from its format
/// file; `order` is absent on older kernels: offset 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilemapFormat {
    pub pfn: u32,
    pub ino: u32,
    pub index: u32,
    pub dev: u32,
    pub order: u32,
    pub valid: u32,
}

/// x86's page-fault error code bits (`X86_PF_*`), as `FaultEvent::error_code` holds them.
pub mod pf {
    /// The page was present: a protection fault (COW, write to read-only, pkey).
    pub const PROT: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    /// An instruction fetch.
    pub const INSTR: u64 = 1 << 4;
    pub const PK: u64 = 1 << 5;
    /// Not a hardware bit: the fault source does not say the access (arm64's perf
    /// page-fault event carries no ESR), so WRITE, INSTR and PROT mean nothing.
    pub const ACCESS_UNKNOWN: u64 = 1 << 62;
}

/// A page fault of a traced process on a user address, at the fault's entry (before the
/// kernel handles it: whether it will need I/O is not known yet).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FaultEvent {
    pub header: EventHeader,
    /// The faulting user address (not page-aligned).
    pub address: u64,
    /// The instruction pointer: user code, or the kernel's when `in_kernel`.
    pub ip: u64,
    /// The hardware error code ([`pf`] bits).
    pub error_code: u64,
    /// Non-zero: the kernel faulted on the user address (`page_fault_kernel`: a syscall
    /// such as read(2) copying into a page not yet present).
    pub in_kernel: u32,
    pub _pad: u32,
    /// The thread's `maj_flt` before this fault: the kernel adds one when a fault needed
    /// I/O (`VM_FAULT_MAJOR`) as it finishes handling it, so the thread's next fault
    /// shows whether this one did.
    pub maj_flt: u64,
}

/// The kernel's resident-set counter types (`MM_FILEPAGES` …), as `kmem/rss_stat` names them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RssMember {
    File = 0,
    Anon = 1,
    Swap = 2,
    Shmem = 3,
}

impl RssMember {
    pub const ALL: [RssMember; 4] = [Self::Anon, Self::File, Self::Shmem, Self::Swap];

    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::File),
            1 => Some(Self::Anon),
            2 => Some(Self::Swap),
            3 => Some(Self::Shmem),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Anon => "anon",
            Self::Swap => "swap",
            Self::Shmem => "shmem",
        }
    }
}

/// A traced process's resident-set counter of one type, as `kmem/rss_stat` computed it
/// (the exact sum, in bytes), emitted when it moved to another [`RSS_QUANTUM`] step since
/// the last record of that process and type.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RssEvent {
    pub header: EventHeader,
    /// An [`RssMember`].
    pub member: u32,
    pub _pad: u32,
    /// Bytes (pages × page size).
    pub bytes: i64,
}

/// The rss probe's step: a record when a counter's `bytes / RSS_QUANTUM` changes, so a
/// curve is exact at each record and never further than this from the counter between
/// records (256 KiB: 4,096 records per type for a 1 GiB memset instead of 262,144).
pub const RSS_QUANTUM: u64 = 256 << 10;

/// Where `kmem/rss_stat` keeps its fields on this kernel (from its format file).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssFormat {
    pub curr: u32,
    pub member: u32,
    pub size: u32,
    pub valid: u32,
}

/// Field offsets of kernel structs, resolved from the running kernel's BTF at load time
/// (Rust eBPF has no CO-RE relocations, and these move between kernel versions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub vma_vm_start: u32,
    pub vma_vm_end: u32,
    pub vma_vm_flags: u32,
    pub vma_vm_pgoff: u32,
    pub vma_vm_file: u32,
    pub file_f_inode: u32,
    /// `offsetof(struct file, f_path) + offsetof(struct path, dentry)`.
    pub file_dentry: u32,
    /// `offsetof(struct dentry, d_name) + offsetof(struct qstr, name)`.
    pub dentry_name: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    /// The path walk (zero where BTF lacks one: the probes then record the leaf name
    /// only): `offsetof(file, f_path.mnt)`, `dentry.d_parent`, `dentry.d_hash.pprev`
    /// (NULL: unhashed, i.e. unlinked), `vfsmount.mnt_root`, and in `struct mount`
    /// (which embeds the `vfsmount` as `mnt`): `mnt`, `mnt_parent`, `mnt_mountpoint`.
    pub file_vfsmount: u32,
    pub dentry_parent: u32,
    pub dentry_hash_pprev: u32,
    pub vfsmount_root: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    /// Non-zero when the seven offsets above were found.
    pub walk_paths: u32,
    /// The path from a task to the file an fd names: `task_struct.files`,
    /// `files_struct.fdt`, `fdtable.max_fds` and `fdtable.fd`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    /// `file.f_op`, `file_operations.mmap` and `.mmap_prepare` (0: not in this kernel),
    /// for [`MmapRegionEvent::mmap_hook`].
    pub file_f_op: u32,
    pub fops_mmap: u32,
    pub fops_mmap_prepare: u32,
    /// `struct mmap_action` (6.17+; 0 where absent): `type` and the union members the
    /// [`Probe::MmapAction`] probe reads.
    pub action_type: u32,
    pub action_remap_start: u32,
    pub action_remap_pfn: u32,
    pub action_remap_size: u32,
    pub action_ioremap_phys: u32,
    pub action_ioremap_size: u32,
    pub action_kernel_start: u32,
    pub action_kernel_pages: u32,
    pub action_kernel_nr_pages: u32,
    pub action_kernel_pgoff: u32,
    /// Non-zero once userspace filled the table; kernel probes emit nothing before.
    pub valid: u32,
}

/// Which processes the probes report, set before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetFilter {
    /// 0: every process; otherwise only this tgid.
    pub tgid: u32,
    /// Non-zero: only tasks whose comm equals `comm`.
    pub match_comm: u32,
    pub comm: [u8; TASK_COMM_LEN],
    /// Non-zero (`verify`): verify's tgid. A reporting thread that verify ptraces is
    /// stopped with SIGSTOP after each reported syscall, exec or fault (verify holds it
    /// and swallows the signal, so the target never sees it), so userspace can compare
    /// /proc/<pid>/maps while nothing moves. A followed task verify does not trace (a
    /// clone made with CLONE_UNTRACED, as sanitizers' leak checkers make to ptrace their
    /// own threads) is never stopped: nobody would resume it.
    pub tracer_tgid: u32,
    /// Non-zero: the children of `tgid` (and theirs) pass the filter too, from the fork
    /// on (an in-kernel map of followed tgids).
    pub follow_forks: u32,
}

/// `task_struct` fields the catch-all, fork and exit programs read, from BTF at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub mm: u32,
    pub pid: u32,
    pub tgid: u32,
    /// `task_struct.signal` and, in the `signal_struct` it points to, `live`: the
    /// threads not yet past `do_exit`'s count (0 once the last one is).
    pub signal: u32,
    pub signal_live: u32,
    /// `task_struct.ptrace` (PT_PTRACED: traced) and `parent` (the tracer, when traced):
    /// whether verify holds the task.
    pub ptrace: u32,
    pub parent: u32,
    /// Non-zero once userspace filled the table.
    pub valid: u32,
}

/// `trace --cgroup`: only tasks in the cgroup v2 `id` or below it, set before load. Kept
/// apart from [`TargetFilter`] (it composes with `--comm`). The test is one helper call
/// per event, no map: the task's ancestor at `level` (the root is level 0) is `id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupFilter {
    /// 0: no cgroup filter.
    pub id: u64,
    pub level: u32,
    pub _pad: u32,
}

/// Bytes of user stack copied per event under `--stacks`, at most, from the stack
/// pointer up (the main thread's copy stops at its initial stack pointer). Chosen by
/// measurement (docs/stacks.md): on Debian's ls and python3, without frame pointers,
/// 8 KiB completes every stack of both (4 KiB: 64% and 53%); more would only serve deeper
/// recursion, at the ring cost of every thread's stack.
pub const USER_STACK_BYTES: usize = 8192;
/// Bytes of a [`UserStack`] before its copy: ip, sp, bp, lr, len and padding.
pub const USER_STACK_HEADER: usize = 40;
/// The copy is made in chunks of this many bytes and stops at the first one that cannot
/// be read (the stack's top, a page not present): what was read is kept.
pub const USER_STACK_CHUNK: usize = 512;

/// `--stacks`: what a DWARF unwinder needs to walk the user stack of the task at the
/// moment of the event: the user registers the syscall (or fault) entered with and a
/// copy of the stack's top. Appended to the event's record ([`Stacked`]), never a record
/// of its own: one reservation keeps the two together (both kept or both lost) and
/// needs no join in userspace.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UserStack {
    /// The user instruction pointer, stack pointer and frame pointer (`pt_regs` ip, sp,
    /// bp); all zero when the task had no user context.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// arm64's link register (x30): a leaf's return address, which no stack slot holds
    /// yet; with pointer authentication bits, stripped by the unwinder. 0 on x86-64.
    pub lr: u64,
    /// Bytes of `bytes` copied from `sp` upwards (a multiple of [`USER_STACK_CHUNK`]).
    pub len: u32,
    pub _pad: u32,
    pub bytes: [u8; USER_STACK_BYTES],
}

/// An event record with the user stack appended. The event keeps its own layout at the
/// record's start, so a decoder that reads only `record_size(kind)` bytes sees the event
/// unchanged; [`stack_offset`] says where the stack starts. The record in the ring ends
/// with the copy: `stack_offset + USER_STACK_HEADER + stack.len` bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Stacked<T> {
    pub event: T,
    pub stack: UserStack,
}

/// Where the [`UserStack`] of a stacked record of `kind` starts.
pub const fn stack_offset(kind: EventKind) -> usize {
    record_size(kind).next_multiple_of(8)
}

/// `--stacks`: what userspace needs to unwind through code that exec mapped (not an mmap
/// event): the executable, where its code went, and where the interpreter (its path is
/// the executable's `PT_INTERP`) was loaded. Read from the new `mm_struct` at
/// `sched_process_exec`, so a process that exits before its records are read still has
/// its own code named.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecImageEvent {
    pub header: EventHeader,
    /// `mm->start_code`: the load bias plus the lowest executable segment's `p_vaddr`.
    pub start_code: u64,
    /// `mm->end_code`.
    pub end_code: u64,
    /// The auxiliary vector's `AT_BASE`: the interpreter's load address (0: none, a static
    /// executable).
    pub interp_base: u64,
    /// `mm->exe_file`.
    pub exe: FileId,
}

/// `mm_struct` fields the exec probe reads under `--stacks`, from BTF at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmOffsets {
    pub start_code: u32,
    pub end_code: u32,
    /// `saved_auxv`: `unsigned long[AT_VECTOR_SIZE]`, type/value pairs.
    pub saved_auxv: u32,
    /// Entries in `saved_auxv`.
    pub saved_auxv_len: u32,
    pub exe_file: u32,
    /// `start_stack`: the initial stack pointer (where argc is); no frame lies above it.
    pub start_stack: u32,
    pub _pad: u32,
    /// Non-zero once userspace filled the table (and `--stacks` is on).
    pub valid: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: as below.
    unsafe impl aya::Pod for super::MmOffsets {}
    // SAFETY: repr(C) integers and arrays with explicit padding: any bytes are a value.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TargetFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CgroupFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FilemapFormat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RssFormat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PageMap {}
}

/// Bytes the CLI expects for each record kind.
pub const fn record_size(kind: EventKind) -> usize {
    match kind {
        EventKind::Syscall => core::mem::size_of::<SyscallEvent>(),
        EventKind::MmapRegion => core::mem::size_of::<MmapRegionEvent>(),
        EventKind::RemapPfn => core::mem::size_of::<RemapPfnEvent>(),
        EventKind::DriverMmap => core::mem::size_of::<DriverMmapEvent>(),
        EventKind::Exec => core::mem::size_of::<ExecEvent>(),
        EventKind::PageCache => core::mem::size_of::<PageCacheEvent>(),
        EventKind::Mmap => core::mem::size_of::<MmapEvent>(),
        EventKind::Fork => core::mem::size_of::<ForkEvent>(),
        EventKind::MmChange => core::mem::size_of::<MmChangeEvent>(),
        EventKind::ExecImage => core::mem::size_of::<ExecImageEvent>(),
        EventKind::Fault => core::mem::size_of::<FaultEvent>(),
        EventKind::Rss => core::mem::size_of::<RssEvent>(),
        EventKind::PageInsert => core::mem::size_of::<PageInsertEvent>(),
        EventKind::Exit => core::mem::size_of::<ExitEvent>(),
    }
}

// The layouts are part of the ABI between the two sides: pin them.
const _: () = assert!(core::mem::size_of::<EventHeader>() == 48);
const _: () = assert!(core::mem::size_of::<SyscallEvent>() == 48 + 16 + 48 + 8);
const _: () = assert!(core::mem::size_of::<FileId>() == 16 + FILE_NAME_LEN);
const _: () = assert!(
    FILE_NAME_LEN == 256,
    "the probe's path walk masks offsets with 255"
);
const _: () = assert!(core::mem::size_of::<MmapEvent>() == 120 + 16 + FILE_NAME_LEN);
const _: () = assert!(core::mem::size_of::<VmaFields>() == 40 + 16 + FILE_NAME_LEN);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 48 + 24);
const _: () = assert!(core::mem::size_of::<MmChangeEvent>() == 48 + 16 + 48 + 24);
const _: () = assert!(core::mem::size_of::<UserStack>() == USER_STACK_HEADER + USER_STACK_BYTES);
const _: () = assert!(USER_STACK_BYTES.is_multiple_of(USER_STACK_CHUNK));
const _: () = assert!(core::mem::size_of::<ExecImageEvent>() == 48 + 24 + 16 + FILE_NAME_LEN);
// The stack follows each stackable event with no padding: stack_offset is its size.
const _: () = assert!(
    core::mem::offset_of!(Stacked<SyscallEvent>, stack) == stack_offset(EventKind::Syscall)
);
const _: () =
    assert!(core::mem::offset_of!(Stacked<MmapEvent>, stack) == stack_offset(EventKind::Mmap));
const _: () = assert!(
    core::mem::offset_of!(Stacked<MmChangeEvent>, stack) == stack_offset(EventKind::MmChange)
);
const _: () = assert!(core::mem::size_of::<FaultEvent>() == 48 + 40);
const _: () = assert!(core::mem::size_of::<RssEvent>() == 48 + 16);
