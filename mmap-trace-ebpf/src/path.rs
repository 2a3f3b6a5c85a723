//! A mapped file's full path, walked in the probe as the call returns, so a process that
//! exits before userspace reads /proc still has its paths (issue 19).
//!
//! `bpf_d_path` would do this in the kernel, but it is only allowed for fentry/fexit/LSM
//! programs on an allow-list of functions (`btf_allowlist_d_path`), not from a raw
//! tracepoint or a kprobe, and fentry is refused on the host (PLATFORM.md). So, as bcc's
//! and Tracee's full-path options do: follow `d_parent` from the file's dentry to its
//! mount's root, cross to the parent mount at its mount point (`struct mount`, reached
//! from the file's `vfsmount` by container_of), and stop at the mount that is its own
//! parent (the namespace's root). Names are written leaf first, each NUL-terminated,
//! into a per-CPU scratch buffer twice the record's size (so every write is in bounds
//! for the verifier whatever the offset), then copied into the record; userspace
//! reverses them. Bounded: FILE_PATH_MAX_DEPTH steps and FILE_NAME_LEN bytes; a walk cut
//! by either keeps the leaf-side components and is marked FILE_PATH_TRUNCATED.

use aya_ebpf::{
    helpers::generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str},
    macros::map,
    maps::PerCpuArray,
};
use mmap_trace_common::{
    FILE_NAME_LEN, FILE_PATH_FULL, FILE_PATH_MAX_DEPTH, FILE_PATH_TRUNCATED, FILE_UNLINKED, FileId,
    KernelOffsets,
};

use crate::kernel::read;

/// The walk's working state. `off` and `flags` live here, in map memory, not in
/// registers: the verifier does not track map contents, so every iteration starts from
/// the same abstract state and the branches of one step (a name, a mount crossed) prune
/// against each other. Kept in registers, each step's two outcomes carried different
/// offsets forward, the states multiplied, and the sys_exit program cost 591,679
/// verified instructions on 6.18 and exceeded the 1,000,000 limit on 6.1.
#[repr(C)]
pub struct PathScratch {
    /// Twice a record's names: a component (at most FILE_NAME_LEN bytes with its NUL)
    /// written at any offset below FILE_NAME_LEN stays inside.
    buf: [u8; 2 * FILE_NAME_LEN],
    /// Bytes of `buf` written (whole components only).
    off: u64,
    flags: u64,
}

#[map]
static PATH_SCRATCH: PerCpuArray<PathScratch> =
    PerCpuArray::with_max_entries(crate::emit::SCRATCH_SLOTS, 0);

/// Replaces `out.name` (the leaf name) with the path of `struct file *file`, leaf to root,
/// and sets `out.flags` and `out.name_len`. Leaves `out` as it is if the scratch buffer
/// is missing or no name could be read. `slot`: the calling program's scratch slot
/// (`emit::SCRATCH_SLOTS`).
#[inline(always)]
pub fn walk(file: u64, o: &KernelOffsets, out: &mut FileId, slot: u32) {
    let Some(s) = PATH_SCRATCH.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: (all accesses to `*s`) a per-CPU map value in the slot only this program
    // uses on this CPU (emit::SCRATCH_SLOTS). Volatile so each step reloads them (see
    // PathScratch).
    let off = unsafe { &raw mut (*s).off };
    // SAFETY: the per-CPU scratch slot this program owns while it runs (see PathScratch).
    let flags = unsafe { &raw mut (*s).flags };
    // SAFETY: the per-CPU scratch slot this program owns while it runs (see PathScratch).
    let buf = unsafe { (&raw mut (*s).buf).cast::<u8>() };
    let vfsmount: u64 = read(file, o.file_vfsmount);
    let mut dentry: u64 = read(file, o.file_dentry);
    let mut mnt = vfsmount.wrapping_sub(u64::from(o.mount_mnt));
    let mut mnt_root: u64 = read(vfsmount, o.vfsmount_root);
    // d_unlinked(): unhashed, or a root that is no mount's root (a pseudo file, below).
    let unlinked = read::<u64>(dentry, o.dentry_hash_pprev) == 0;
    // SAFETY: writes inside the scratch slot above, bounded by its size.
    unsafe {
        off.write_volatile(0);
        flags.write_volatile(if unlinked {
            u64::from(FILE_UNLINKED)
        } else {
            0
        });
    }
    for _ in 0..FILE_PATH_MAX_DEPTH {
        if dentry == 0 {
            break;
        }
        if dentry == mnt_root {
            let parent: u64 = read(mnt, o.mount_parent);
            if parent == mnt || parent == 0 {
                // The namespace's root mount: the path is whole.
                // SAFETY: the per-CPU scratch slot this program owns while it runs (see PathScratch).
                unsafe { flags.write_volatile(flags.read_volatile() | u64::from(FILE_PATH_FULL)) };
                break;
            }
            dentry = read(mnt, o.mount_mountpoint);
            mnt = parent;
            mnt_root = read(mnt + u64::from(o.mount_mnt), o.vfsmount_root);
            continue;
        }
        // SAFETY: the per-CPU scratch slot this program owns while it runs (see PathScratch).
        let at = unsafe { off.read_volatile() };
        if at >= FILE_NAME_LEN as u64 {
            break; // full: what is left is lost
        }
        let name: u64 = read(dentry, o.dentry_name);
        // SAFETY: at < FILE_NAME_LEN (masked for the verifier) and the copy is at most
        // FILE_NAME_LEN bytes, inside the 2 * FILE_NAME_LEN buffer; the helper tolerates
        // bad source addresses.
        let n = unsafe {
            bpf_probe_read_kernel_str(
                buf.add((at & (FILE_NAME_LEN as u64 - 1)) as usize).cast(),
                FILE_NAME_LEN as u32,
                name as *const _,
            )
        };
        if n <= 0 || at + n as u64 > FILE_NAME_LEN as u64 {
            break; // unreadable, or does not fit: dropped with the rest
        }
        // SAFETY: the per-CPU scratch slot this program owns while it runs (see PathScratch).
        unsafe { off.write_volatile(at + n as u64) };
        let parent: u64 = read(dentry, o.dentry_parent);
        if parent == dentry {
            // A root that is not its mount's root: a pseudo file (memfd, shared
            // /dev/zero, SysV shm) or a detached tree. d_path stops here too.
            let done = u64::from(FILE_UNLINKED | FILE_PATH_FULL);
            // SAFETY: the per-CPU scratch slot this program owns while it runs (see PathScratch).
            unsafe { flags.write_volatile(flags.read_volatile() | done) };
            break;
        }
        dentry = parent;
    }
    // SAFETY: the per-CPU scratch slot this program owns while it runs (see PathScratch).
    let (used, found) = unsafe { (off.read_volatile(), flags.read_volatile()) };
    if used == 0 || used > FILE_NAME_LEN as u64 {
        return; // nothing read: keep the leaf name read before
    }
    // SAFETY: both buffers hold FILE_NAME_LEN bytes; the source is our scratch.
    unsafe {
        bpf_probe_read_kernel(
            out.name.as_mut_ptr().cast(),
            FILE_NAME_LEN as u32,
            buf.cast(),
        );
    }
    out.name_len = used as u16;
    let found = found as u16;
    out.flags = if found & FILE_PATH_FULL != 0 {
        found
    } else {
        found | FILE_PATH_TRUNCATED
    };
}
