//! `vm_flags` bits (include/linux/mm.h; the same on the 6.1 guest and the 6.18 host for
//! these), as `/proc/mmtrace_vmas` and the eBPF VMA snapshots report them. The CLI's
//! flag-name table (`mmap-trace/src/flags.rs`, `flags::VM`) is built from these.

pub const READ: u64 = 0x1;
pub const WRITE: u64 = 0x2;
pub const EXEC: u64 = 0x4;
pub const SHARED: u64 = 0x8;
pub const MAYREAD: u64 = 0x10;
pub const MAYWRITE: u64 = 0x20;
pub const MAYEXEC: u64 = 0x40;
pub const MAYSHARE: u64 = 0x80;
pub const GROWSDOWN: u64 = 0x100;
pub const PFNMAP: u64 = 0x400;
pub const IO: u64 = 0x4000;
pub const DONTEXPAND: u64 = 0x40000;
pub const DONTDUMP: u64 = 0x400_0000;
pub const MIXEDMAP: u64 = 0x1000_0000;

/// What `remap_pfn_range` sets on the VMA it maps (and the driver's mmap must leave).
pub const REMAP_PFN_RANGE: u64 = IO | PFNMAP | DONTEXPAND | DONTDUMP;

/// `r-xp`: the perms column /proc/<pid>/maps shows for these vm_flags (the kernel's
/// show_map_vma: `s` for VM_MAYSHARE, so a read-only shared file mapping is `r--s`).
pub fn perms(vm_flags: u64) -> String {
    let bit = |b: u64, c: char| if vm_flags & b != 0 { c } else { '-' };
    [
        bit(READ, 'r'),
        bit(WRITE, 'w'),
        bit(EXEC, 'x'),
        if vm_flags & MAYSHARE != 0 { 's' } else { 'p' },
    ]
    .into_iter()
    .collect()
}

/// The vm_flags mmap(2) gives a mapping made with `prot` (PROT_READ/WRITE/EXEC are the
/// same bits as VM_READ/WRITE/EXEC, the kernel's calc_vm_prot_bits) and MAP_SHARED or not.
pub fn from_prot(prot: u64, shared: bool) -> u64 {
    (prot & (READ | WRITE | EXEC)) | if shared { SHARED | MAYSHARE } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perms_like_proc_maps() {
        assert_eq!(perms(READ | EXEC), "r-xp");
        assert_eq!(perms(READ | WRITE | SHARED | MAYSHARE), "rw-s");
        // A read-only shared mapping: VM_SHARED is clear, VM_MAYSHARE is not.
        assert_eq!(perms(READ | MAYREAD | MAYSHARE), "r--s");
        assert_eq!(perms(0), "---p");
        assert_eq!(
            perms(from_prot(
                libc::PROT_READ as u64 | libc::PROT_EXEC as u64,
                false
            )),
            "r-xp"
        );
        assert_eq!(perms(from_prot(libc::PROT_WRITE as u64, true)), "-w-s");
    }
}
