//! One entry point from a raw syscall (number, six arguments, return value; the CLI's own
//! architecture's numbering: `syscalls::Sysno` is the target's table) to
//! the address-space model: what verify calls for every call it learns of, and what
//! report calls for the calls of a JSON trace.

use syscalls::Sysno;

use super::model::{AddressSpace, FileIdentity};
use super::region::{PAGE, page_up};

/// A SysV shared memory segment (/proc/sysvipc/shm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmSegment {
    /// Bytes (not page-aligned).
    pub size: u64,
    /// The key it was created with (`IPC_PRIVATE` is 0): maps names it `SYSV%08x`.
    pub key: u32,
}

/// What the event alone does not carry, looked up while the process holds still.
pub trait CallEnv {
    /// The file behind `fd` in the calling process.
    fn fd_file(&self, fd: i32) -> Option<FileIdentity>;
    /// The segment `shmid`.
    fn shm_segment(&self, shmid: i32) -> Option<ShmSegment>;
}

/// Knows nothing beyond the event (a model driven by events only).
pub struct NoEnv;

impl CallEnv for NoEnv {
    fn fd_file(&self, _fd: i32) -> Option<FileIdentity> {
        None
    }
    fn shm_segment(&self, _shmid: i32) -> Option<ShmSegment> {
        None
    }
}

/// Knows the path of the file an mmap mapped, from its trace event (report, `trace
/// --faults`): a model driven by events, whose mapped files keep their names.
pub struct TracedFile<'a>(pub Option<&'a [u8]>);

impl CallEnv for TracedFile<'_> {
    fn fd_file(&self, _fd: i32) -> Option<FileIdentity> {
        self.0.map(|path| FileIdentity {
            dev: (0, 0),
            inode: 0,
            path: path.to_vec(),
            overlay: false,
            rdev: None,
        })
    }
    fn shm_segment(&self, _shmid: i32) -> Option<ShmSegment> {
        None
    }
}

/// What [`apply_syscall`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The model changed as the kernel did.
    Modelled,
    /// The call changes nothing maps shows (at most it splits or merges VMAs, which the
    /// comparison does not see: madvise, mlock, mseal, mbind, a fork's parent…).
    NoMapsChange,
    /// The call failed: nothing changed.
    Failed,
    /// The model cannot say what changed: the caller adopts the kernel's view for the
    /// ranges that differ and records `cause`.
    Unmodelled { cause: &'static str },
}

const ENOMEM: i64 = libc::ENOMEM as i64;
const MREMAP_FIXED: u64 = libc::MREMAP_FIXED as u64;
const PR_SET_MM: u64 = 35;
const PR_SET_VMA: u64 = 0x5356_4d41;
#[cfg(target_arch = "x86_64")]
const ARCH_MAP_VDSO_X32: u64 = 0x2001;
#[cfg(target_arch = "x86_64")]
const ARCH_MAP_VDSO_32: u64 = 0x2002;
#[cfg(target_arch = "x86_64")]
const ARCH_MAP_VDSO_64: u64 = 0x2003;
#[cfg(target_arch = "x86_64")]
const ARCH_SHSTK_ENABLE: u64 = 0x5001;
const MAP_HUGETLB: u64 = libc::MAP_HUGETLB as u64;

/// Applies a completed call (`ret`: the raw return value, `-errno` on failure) made by
/// the process whose space this is. exec is the caller's: it reseeds the space from the
/// kernel's view (or calls [`AddressSpace::exec`]); here it is `Unmodelled`.
pub fn apply_syscall(
    space: &mut AddressSpace,
    nr: u64,
    args: [u64; 6],
    ret: i64,
    env: &dyn CallEnv,
) -> Applied {
    let Some(sysno) = usize::try_from(nr).ok().and_then(Sysno::new) else {
        return Applied::Unmodelled {
            cause: "unknown syscall",
        };
    };
    let failed = (-4095..0).contains(&ret);
    let a = args;
    // Calls that change the model even when they fail.
    match sysno {
        // do_mprotect_pkey changed every region up to the hole before it said ENOMEM.
        Sysno::mprotect | Sysno::pkey_mprotect if ret == -ENOMEM => {
            space.mprotect_to_hole(a[0], a[1], a[2]);
            return Applied::Modelled;
        }
        // madvise_walk_vmas applies the advice to every mapped part, then says ENOMEM
        // for the holes.
        Sysno::madvise if ret == -ENOMEM => {
            return if space.madvise(a[0], a[1], a[2]) {
                Applied::Modelled
            } else {
                Applied::NoMapsChange
            };
        }
        // brk never fails: it returns the old break.
        Sysno::brk => {
            space.brk(a[0], ret as u64);
            return Applied::Modelled;
        }
        _ if failed => return Applied::Failed,
        _ => {}
    }
    let ret = ret as u64;
    match sysno {
        Sysno::mmap => {
            let anonymous = a[3] & libc::MAP_ANONYMOUS as u64 != 0;
            let file = if anonymous { None } else { env.fd_file(a[4] as i32) };
            let known = anonymous || file.is_some();
            space.mmap(ret, a[1], a[2], a[3], a[5], file);
            if a[3] & MAP_HUGETLB != 0 && anonymous {
                // hugetlbfs makes an unlinked file (`/anon_hugepage (deleted)`) the
                // events do not name.
                return Applied::Unmodelled { cause: "mmap" };
            }
            if known { Applied::Modelled } else { Applied::Unmodelled { cause: "mmap" } }
        }
        Sysno::munmap => {
            space.munmap(a[0], a[1]);
            Applied::Modelled
        }
        Sysno::mprotect | Sysno::pkey_mprotect => {
            space.mprotect(a[0], a[1], a[2]);
            Applied::Modelled
        }
        Sysno::mremap => {
            space.mremap(a[0], a[1], a[2], a[3], ret);
            Applied::Modelled
        }
        Sysno::shmat => match env.shm_segment(a[0] as i32) {
            Some(seg) => {
                space.shmat(ret, a[0], seg.key, seg.size, a[2]);
                Applied::Modelled
            }
            None => Applied::Unmodelled { cause: "shmat" },
        },
        Sysno::shmdt => {
            let size = space.shm_attached_at(a[0]).and_then(|id| env.shm_segment(id as i32)).map(|s| s.size);
            if space.shmdt(a[0], size) { Applied::Modelled } else { Applied::Unmodelled { cause: "shmdt" } }
        }
        Sysno::remap_file_pages => {
            if space.remap_file_pages(a[0], a[1], a[3]) {
                Applied::Modelled
            } else {
                Applied::Unmodelled { cause: "remap_file_pages" }
            }
        }
        Sysno::map_shadow_stack => {
            space.map_shadow_stack(ret, a[1]);
            Applied::Modelled
        }
        Sysno::madvise => {
            if space.madvise(a[0], a[1], a[2]) { Applied::Modelled } else { Applied::NoMapsChange }
        }
        Sysno::prctl if a[0] == PR_SET_VMA => Applied::Unmodelled { cause: "prctl(PR_SET_VMA)" },
        Sysno::prctl if a[0] == PR_SET_MM => Applied::Unmodelled { cause: "prctl(PR_SET_MM)" },
        #[cfg(target_arch = "x86_64")]
        Sysno::arch_prctl if matches!(a[0], ARCH_MAP_VDSO_X32 | ARCH_MAP_VDSO_32 | ARCH_MAP_VDSO_64) => {
            Applied::Unmodelled { cause: "arch_prctl(ARCH_MAP_VDSO)" }
        }
        #[cfg(target_arch = "x86_64")]
        Sysno::arch_prctl if a[0] == ARCH_SHSTK_ENABLE => Applied::Unmodelled { cause: "arch_prctl(ARCH_SHSTK_ENABLE)" },
        // A userfaultfd's REGISTER/UNREGISTER split VMAs only.
        Sysno::ioctl if env.fd_file(a[0] as i32).is_some_and(|f| f.path == b"anon_inode:[userfaultfd]") => {
            Applied::NoMapsChange
        }
        // Splits and merges only (maps never joins neighbours; the comparison does).
        Sysno::mlock
        | Sysno::mlock2
        | Sysno::munlock
        | Sysno::mlockall
        | Sysno::munlockall
        | Sysno::mseal
        | Sysno::mbind
        | Sysno::set_mempolicy_home_node
        | Sysno::prctl
        // Closing a userfaultfd unregisters its ranges: merges only.
        | Sysno::close
        | Sysno::userfaultfd
        // A fork writes the child's space; the parent's maps stay (the child's: fork_child).
        | Sysno::clone
        | Sysno::clone3
        | Sysno::exit
        | Sysno::exit_group
        | Sysno::msync
        | Sysno::mincore
        | Sysno::set_mempolicy
        | Sysno::process_madvise
        | Sysno::migrate_pages
        | Sysno::move_pages => Applied::NoMapsChange,
        // x86-64 only: arch_prctl's other codes; fork and vfork (arm64 forks with clone).
        #[cfg(target_arch = "x86_64")]
        Sysno::arch_prctl | Sysno::fork | Sysno::vfork => Applied::NoMapsChange,
        other => Applied::Unmodelled { cause: other.name() },
    }
}

/// The ranges a completed call may have changed, page-aligned: what a successful call
/// mapped, moved or changed, and what a failed one may have changed all the same (empty:
/// nothing, or not a range call). The kernel works VMA by VMA and returns at the first it
/// must refuse, keeping what it did before: an mprotect whose range ends in a sealed VMA
/// (6.13+ checks each VMA as it goes), an mremap moving several VMAs whose second cannot
/// move (6.17+), a MAP_FIXED mmap or an MREMAP_FIXED that unmapped the destination and
/// then failed (before 6.17 an mremap whose source is not one VMA fails that way). verify
/// compares these ranges after a failed call and adopts what the kernel did there.
pub fn call_ranges(nr: u64, args: [u64; 6], ret: i64) -> Vec<(u64, u64)> {
    let Some(sysno) = usize::try_from(nr).ok().and_then(Sysno::new) else {
        return Vec::new();
    };
    let failed = (-4095..0).contains(&ret);
    let range = |addr: u64, len: u64| {
        let start = addr & !(PAGE - 1);
        (
            start,
            start.saturating_add(page_up(len.saturating_add(addr - start))),
        )
    };
    let a = args;
    match sysno {
        Sysno::mprotect
        | Sysno::pkey_mprotect
        | Sysno::madvise
        | Sysno::munmap
        | Sysno::mseal
        | Sysno::mlock
        | Sysno::mlock2
        | Sysno::munlock
        | Sysno::mbind
        | Sysno::remap_file_pages => vec![range(a[0], a[1])],
        Sysno::mremap => {
            let mut ranges = vec![range(a[0], a[1].max(a[2]))];
            if !failed {
                ranges.push(range(ret as u64, a[2]));
            } else if a[3] & MREMAP_FIXED != 0 {
                ranges.push(range(a[4], a[2]));
            }
            ranges
        }
        Sysno::mmap if !failed => vec![range(ret as u64, a[1])],
        Sysno::mmap if a[3] & libc::MAP_FIXED as u64 != 0 => vec![range(a[0], a[1])],
        _ => Vec::new(),
    }
}
