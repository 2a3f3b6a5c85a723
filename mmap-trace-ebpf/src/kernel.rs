//! Reading `vm_area_struct`, `file`, `inode`, `dentry` and fd-table fields at offsets
//! the loader resolved from the running kernel's BTF.

use aya_ebpf::helpers::{
    bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated::bpf_get_current_task,
};
use mmap_trace_common::{FileId, KernelOffsets, TaskOffsets, VmaFields};

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    vma_vm_start: 0,
    vma_vm_end: 0,
    vma_vm_flags: 0,
    vma_vm_pgoff: 0,
    vma_vm_file: 0,
    file_f_inode: 0,
    file_dentry: 0,
    dentry_name: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    sb_s_dev: 0,
    file_vfsmount: 0,
    dentry_parent: 0,
    dentry_hash_pprev: 0,
    vfsmount_root: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    walk_paths: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_f_op: 0,
    fops_mmap: 0,
    fops_mmap_prepare: 0,
    action_type: 0,
    action_remap_start: 0,
    action_remap_pfn: 0,
    action_remap_size: 0,
    action_ioremap_phys: 0,
    action_ioremap_size: 0,
    action_kernel_start: 0,
    action_kernel_pages: 0,
    action_kernel_nr_pages: 0,
    action_kernel_pgoff: 0,
    valid: 0,
};

/// `task_struct.{mm,pid,tgid,signal,ptrace,parent}` and `signal_struct.live`, for the
/// fork, exit and catch-all programs and verify's stops; set by the loader.
#[unsafe(no_mangle)]
static TASK_OFFSETS: TaskOffsets = TaskOffsets {
    mm: 0,
    pid: 0,
    tgid: 0,
    signal: 0,
    signal_live: 0,
    ptrace: 0,
    parent: 0,
    valid: 0,
};

#[inline(always)]
pub fn task_offsets() -> Option<TaskOffsets> {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let offsets = unsafe { core::ptr::read_volatile(&TASK_OFFSETS) };
    (offsets.valid != 0).then_some(offsets)
}

#[inline(always)]
pub fn offsets() -> Option<KernelOffsets> {
    // SAFETY: a read of our own global; volatile so the loader's value is seen.
    let offsets = unsafe { core::ptr::read_volatile(&OFFSETS) };
    (offsets.valid != 0).then_some(offsets)
}

/// Reads a `T` at `base + offset` in kernel memory; zero when unreadable.
#[inline(always)]
pub fn read<T: Default>(base: u64, offset: u32) -> T {
    if base == 0 {
        return T::default();
    }
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.unwrap_or_default()
}

/// Fills `out` for `struct file *file` (zeroes for anonymous memory): its identity, and
/// its full path where BTF gave the walk's offsets (path.rs), else its leaf name. `slot`:
/// the caller's scratch slot (`emit::SCRATCH_SLOTS`).
#[inline(always)]
pub fn read_file(file: u64, o: &KernelOffsets, out: &mut FileId, slot: u32) {
    no_file(out);
    if file == 0 {
        return;
    }
    read_identity(file, o, out);
    if o.walk_paths != 0 {
        crate::path::walk(file, o, out, slot);
    }
}

/// Device, inode and the dentry's own name.
#[inline(always)]
fn read_identity(file: u64, o: &KernelOffsets, out: &mut FileId) {
    let inode: u64 = read(file, o.file_f_inode);
    out.ino = read(inode, o.inode_i_ino);
    let sb: u64 = read(inode, o.inode_i_sb);
    out.dev = read(sb, o.sb_s_dev);
    let dentry: u64 = read(file, o.file_dentry);
    let name: u64 = read(dentry, o.dentry_name);
    if name != 0 {
        // SAFETY: the helper bounds the copy by `out.name` and tolerates bad addresses.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut out.name) };
    }
}

/// An anonymous mapping's `FileId`: all zero.
#[inline(always)]
pub fn no_file(out: &mut FileId) {
    out.dev = 0;
    out.flags = 0;
    out.name_len = 0;
    out.ino = 0;
    out.name[0] = 0;
}

/// Fills `out` for the file that `fd` names in the current task (zeroes when it names
/// none). Read at the call's exit: a thread that closed or replaced the fd meanwhile
/// makes this another file, or none (the README says so).
#[inline(always)]
pub fn read_fd_file(fd: i32, o: &KernelOffsets, out: &mut FileId, slot: u32) {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, o.task_files);
    let fdt: u64 = read(files, o.files_fdt);
    let max_fds: u32 = read(fdt, o.fdt_max_fds);
    let file = if fd >= 0 && (fd as u32) < max_fds {
        let fds: u64 = read(fdt, o.fdt_fd);
        read(fds + u64::from(fd as u32) * 8, 0)
    } else {
        0
    };
    read_file(file, o, out, slot);
}

/// Fills `out` for `struct vm_area_struct *vma` (for the kprobes: preemption off).
#[inline(always)]
pub fn read_vma(vma: u64, o: &KernelOffsets, out: &mut VmaFields) {
    out.vma = vma;
    out.vm_start = read(vma, o.vma_vm_start);
    out.vm_end = read(vma, o.vma_vm_end);
    out.vm_flags = read(vma, o.vma_vm_flags);
    out.vm_pgoff = read(vma, o.vma_vm_pgoff);
    let file: u64 = read(vma, o.vma_vm_file);
    read_file(file, o, &mut out.file, crate::emit::OTHER_SLOT);
}
