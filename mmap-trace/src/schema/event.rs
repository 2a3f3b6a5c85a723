//! `{"type":"event",…}`: one traced call or kernel event, its probe's own fields in
//! [`Body`] (one variant per probe, named by the `probe` key).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{Hex, Record};

/// Every event: who, when, which probe (the body's tag) and what it saw. Fields in the
/// order of the line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord<'a> {
    /// CLOCK_MONOTONIC at the call's exit (a fault's: at its entry).
    pub ts_ns: u64,
    pub pid: u32,
    #[serde(default)]
    pub tid: u32,
    #[serde(default)]
    pub comm: Cow<'a, str>,
    /// The comm's exact bytes where they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_hex: Option<String>,
    #[serde(flatten)]
    pub body: Body,
    /// `trace --stacks`: the user stack, innermost frame first (`[]`: none could be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<Cow<'a, [Frame]>>,
    /// The task's cgroup v2 id, and its path below the cgroup2 root when it could be
    /// named. Absent from traces older than `--cgroup`.
    #[serde(default)]
    pub cgroup_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

impl Record for EventRecord<'_> {
    const TYPE: &'static str = "event";
}

/// A probe's own fields; the variant is the `probe` key (`Probe::name`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "probe", rename_all = "snake_case")]
pub enum Body {
    Mmap(Mmap),
    Munmap(Munmap),
    Mprotect(Mprotect),
    Mremap(Mremap),
    Brk(Brk),
    MmapRegion(MmapRegion),
    RemapPfnRange(RemapPfnRange),
    /// The page-insertion family, one variant per function, the same fields.
    VmInsertPage(PageInsert),
    VmInsertPages(PageInsert),
    VmfInsertPfn(PageInsert),
    VmfInsertMixed(PageInsert),
    VmIomapMemory(PageInsert),
    RemapVmallocRange(PageInsert),
    MmapAction(PageInsert),
    DriverMmap(DriverMmap),
    /// execve replaced the address space (no fields of its own).
    Exec,
    PageCache(PageCache),
    Fork(Fork),
    MmLock(MmLock),
    Fault(Fault),
    Rss(Rss),
    /// The process's last thread exited (no fields of its own). The consumers release
    /// the process's state at it; trace does not write it today.
    Exit,
    /// A probe newer than this reader: read, never written.
    #[serde(other)]
    Unknown,
}

/// How a call ended: an address, a plain value, or an errno (`ret` and its name).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret_addr: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A file as the kernel identifies it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct File {
    /// `major:minor` in hex, as the dev column of /proc/<pid>/maps.
    pub dev: String,
    pub ino: u64,
    /// The last component of the path.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
}

/// A mapped file's path: `path` (and `path_hex`) as for names; `path_truncated`: the
/// kernel's walk was cut (too deep or too long) and no /proc/<pid>/maps line filled in
/// the rest, so `path` holds the components nearest the file only, without a leading
/// '/'; `path_deleted`: the file was unlinked (or never linked: memfd, a shared mapping
/// of /dev/zero) when it was mapped. The two flags appear only when true.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PathFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_deleted: bool,
}

/// A VMA as a kernel probe read it (`remap_pfn_range`'s `vma`, `driver_mmap`'s
/// `before`/`after`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vma {
    /// The `struct vm_area_struct`'s kernel address.
    pub vma: Hex,
    pub start: Hex,
    pub end: Hex,
    pub flags: String,
    pub flags_raw: Hex,
    pub pgoff: Hex,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    /// The file's path as the kernel probe walked it.
    #[serde(flatten)]
    pub path: PathFields,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mmap {
    pub addr: Hex,
    pub len: Hex,
    pub prot: String,
    pub prot_raw: u64,
    pub flags: String,
    pub flags_raw: u64,
    pub fd: i32,
    pub offset: Hex,
    /// The file the fd named as the call returned (the kernel's view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    #[serde(flatten)]
    pub path: PathFields,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Munmap {
    pub addr: Hex,
    pub len: Hex,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mprotect {
    pub addr: Hex,
    pub len: Hex,
    pub prot: String,
    pub prot_raw: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mremap {
    pub old_addr: Hex,
    pub old_len: Hex,
    pub new_len: Hex,
    pub flags: String,
    pub flags_raw: u64,
    pub new_addr: Hex,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// brk(2) returns the (possibly unchanged) break, never an errno.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Brk {
    /// The break asked for.
    pub addr: Hex,
    /// The break after the call.
    pub ret_addr: Hex,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MmapRegion {
    pub addr: Hex,
    pub len: Hex,
    pub vm_flags: String,
    pub vm_flags_raw: Hex,
    pub pgoff: Hex,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    /// The file's path as the kernel probe walked it.
    #[serde(flatten)]
    pub path: PathFields,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemapPfnRange {
    pub vma: Vma,
    pub addr: Hex,
    pub pfn: Hex,
    pub size: Hex,
    /// `pgprot_val`.
    pub prot: Hex,
}

/// The page-insertion family (`probe` says which function): the first user address and
/// PFN, the pages asked for, and `kaddr` (vmalloc or physical address) where the function
/// takes one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PageInsert {
    pub vma: Vma,
    pub addr: Hex,
    pub pfn: Hex,
    pub pages: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kaddr: Option<Hex>,
    /// `mmap_action`: what the driver's mmap_prepare asked for (`remap_pfn`,
    /// `io_remap_pfn`, `simple_io_remap`, `map_kernel_pages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriverMmap {
    pub before: Vma,
    pub after: Vma,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A file page entered the page cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PageCache {
    pub dev: String,
    pub ino: u64,
    /// Page index in the file.
    pub index: u64,
    pub pfn: Hex,
    /// The folio's pages: pfn..pfn+pages hold index..index+pages.
    pub pages: u64,
}

/// A followed process made a child process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fork {
    pub child_pid: u32,
    /// The child shares the parent's address space until it execs (vfork, CLONE_VM).
    pub shares_mm: bool,
}

/// The catch-all: the process's mm was write-locked by `cause`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MmLock {
    /// `syscall`, `fault` or `kernel` (another task).
    pub cause: String,
    /// The syscall's name (`cause` syscall).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<[Hex; 6]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    /// The process of the task that took the lock (`kernel`: another one).
    pub locker_pid: u32,
}

/// A page fault on a user address (`trace --faults`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub addr: Hex,
    /// User code's, or the kernel's when `in_kernel`.
    pub ip: Hex,
    pub access: Access,
    /// The page was present: a protection fault (copy-on-write, a write to a read-only
    /// page, a protection key); false: the page was not mapped yet.
    #[serde(default)]
    pub present: bool,
    /// The kernel faulted on the user address inside a syscall (read(2) into a fresh
    /// buffer); `ip` is then the kernel's.
    #[serde(default)]
    pub in_kernel: bool,
    /// x86's `X86_PF_*` bits.
    pub error_code: Hex,
    /// The thread's count of faults that needed I/O before this one (its next fault's
    /// `maj_flt` is one more when this one did).
    #[serde(default)]
    pub maj_flt: u64,
    /// The mapping the address is in, by the address-space model as the fault happened
    /// (absent when the model knows no mapping there: a bad access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vma: Option<FaultVma>,
}

/// What a faulting access did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    Write,
    /// An instruction fetch.
    Exec,
    /// The fault source does not say (arm64's perf page-fault event).
    Unknown,
}

impl Access {
    /// The JSON string without quotes (the fast writer's; a test holds it to serde's).
    pub const fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Exec => "exec",
            Access::Unknown => "unknown",
        }
    }
}

/// The mapping a fault hit: its range as the model had it, perms and name (maps'
/// columns).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FaultVma {
    pub start: Hex,
    pub end: Hex,
    pub perms: String,
    /// maps' name column: a path, `[heap]`, `[stack]`, or empty for anonymous memory.
    pub name: String,
}

/// A resident-set counter of the process moved to another 256 KiB step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rss {
    /// `anon`, `file`, `shmem` or `swap` (the kernel's MM_*PAGES / MM_SWAPENTS).
    pub member: String,
    /// The counter, exact at this instant, in bytes.
    #[serde(default)]
    pub bytes: i64,
}

/// One frame of a symbolized stack: the `stack` array's element.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub addr: Hex,
    /// The function; absent where nothing names it (stripped, JIT, deleted file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sym: Option<String>,
    /// The mapped file the address is in, and the address's offset in that file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off: Option<Hex>,
    /// Source file and line, where the file has DWARF line information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}
