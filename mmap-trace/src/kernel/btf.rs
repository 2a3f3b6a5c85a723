//! Kernel struct field offsets from the running kernel's BTF, handed to the kernel
//! probes as the `OFFSETS` global (Rust eBPF has no CO-RE field relocations, and these
//! offsets differ between, e.g., the 6.1 guest and the 6.18 host).

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use mmap_trace_common::{KernelOffsets, MmOffsets, TaskOffsets};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The running kernel's BTF, parsed once per start.
pub struct KernelBtf {
    btf: Btf,
    path: std::path::PathBuf,
}

impl KernelBtf {
    pub fn open(path: &Path) -> Result<Self> {
        // Mapped, only the types asked for are parsed: ~2 ms and ~3 MB instead of ~100 ms
        // and ~60 MB for the whole kernel's BTF. sysfs maps vmlinux BTF since 6.16; older
        // kernels (the 6.1 guest) are read whole.
        let btf = Btf::from_file_with_backend(path, btf_rs::Backend::Mmap);
        let btf = btf.or_else(|_| Btf::from_file(path)).with_context(|| {
            format!(
                "cannot read kernel BTF from {}: mmap-trace needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF=y (or pass --btf PATH)",
                path.display()
            )
        })?;
        Ok(Self {
            btf,
            path: path.to_owned(),
        })
    }

    fn offset(&self, ty: &str, fields: &[&str]) -> Result<u32> {
        field_offset(&self.btf, ty, fields).with_context(|| {
            format!(
                "BTF in {}: struct {ty}: {}",
                self.path.display(),
                fields.join(".")
            )
        })
    }

    /// What the kernel probes read from `vm_area_struct` and the file behind it.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets> {
        let offsets = KernelOffsets {
            vma_vm_start: self.offset("vm_area_struct", &["vm_start"])?,
            vma_vm_end: self.offset("vm_area_struct", &["vm_end"])?,
            vma_vm_flags: self.offset("vm_area_struct", &["vm_flags"])?,
            vma_vm_pgoff: self.offset("vm_area_struct", &["vm_pgoff"])?,
            vma_vm_file: self.offset("vm_area_struct", &["vm_file"])?,
            file_f_inode: self.offset("file", &["f_inode"])?,
            file_dentry: self.offset("file", &["f_path", "dentry"])?,
            dentry_name: self.offset("dentry", &["d_name", "name"])?,
            inode_i_ino: self.offset("inode", &["i_ino"])?,
            inode_i_sb: self.offset("inode", &["i_sb"])?,
            sb_s_dev: self.offset("super_block", &["s_dev"])?,
            task_files: self.offset("task_struct", &["files"])?,
            files_fdt: self.offset("files_struct", &["fdt"])?,
            fdt_max_fds: self.offset("fdtable", &["max_fds"])?,
            fdt_fd: self.offset("fdtable", &["fd"])?,
            file_f_op: self.offset("file", &["f_op"])?,
            fops_mmap: self.offset("file_operations", &["mmap"])?,
            valid: 1,
            ..self.mmap_prepare_offsets()
        };
        Ok(match self.path_walk_offsets(offsets) {
            Ok(with_walk) => with_walk,
            Err(e) => {
                log::warn!("no full paths from the kernel (leaf names only): {e:#}");
                offsets
            }
        })
    }

    /// The offsets of the probe's path walk (mmap-trace-ebpf/src/path.rs). `struct mount`
    /// is internal to fs/, but BTF has it like any other type.
    fn path_walk_offsets(&self, o: KernelOffsets) -> Result<KernelOffsets> {
        Ok(KernelOffsets {
            file_vfsmount: self.offset("file", &["f_path", "mnt"])?,
            dentry_parent: self.offset("dentry", &["d_parent"])?,
            dentry_hash_pprev: self.offset("dentry", &["d_hash", "pprev"])?,
            vfsmount_root: self.offset("vfsmount", &["mnt_root"])?,
            mount_mnt: self.offset("mount", &["mnt"])?,
            mount_parent: self.offset("mount", &["mnt_parent"])?,
            mount_mountpoint: self.offset("mount", &["mnt_mountpoint"])?,
            walk_paths: 1,
            ..o
        })
    }

    /// The 6.17+ mmap_prepare machinery (`file_operations.mmap_prepare`, `struct
    /// mmap_action`); all 0 on kernels without it, which turns its reads off.
    fn mmap_prepare_offsets(&self) -> KernelOffsets {
        let get = |ty: &str, fields: &[&str]| self.offset(ty, fields).ok();
        let action = |fields: &[&str]| get("mmap_action", fields);
        match (
            get("file_operations", &["mmap_prepare"]),
            action(&["type"]),
            action(&["remap", "start"]),
            action(&["remap", "start_pfn"]),
            action(&["remap", "size"]),
        ) {
            (Some(prepare), Some(ty), Some(start), Some(pfn), Some(size)) => KernelOffsets {
                fops_mmap_prepare: prepare,
                action_type: ty,
                action_remap_start: start,
                action_remap_pfn: pfn,
                action_remap_size: size,
                action_ioremap_phys: action(&["simple_ioremap", "start_phys_addr"]).unwrap_or(0),
                action_ioremap_size: action(&["simple_ioremap", "size"]).unwrap_or(0),
                action_kernel_start: action(&["map_kernel", "start"]).unwrap_or(0),
                action_kernel_pages: action(&["map_kernel", "pages"]).unwrap_or(0),
                action_kernel_nr_pages: action(&["map_kernel", "nr_pages"]).unwrap_or(0),
                action_kernel_pgoff: action(&["map_kernel", "pgoff"]).unwrap_or(0),
                ..KernelOffsets::default()
            },
            (prepare, ..) => KernelOffsets {
                fops_mmap_prepare: prepare.unwrap_or(0),
                ..KernelOffsets::default()
            },
        }
    }

    /// `sizeof(struct page)`, for the page-insertion probes' vmemmap arithmetic.
    pub fn struct_page_size(&self) -> Result<u64> {
        match self
            .btf
            .resolve_types_by_name("page")?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_)))
        {
            Some(Type::Struct(page)) => Ok(page.size() as u64),
            _ => bail!("BTF in {}: no struct page", self.path.display()),
        }
    }

    /// What the fork, exit and catch-all programs (and verify's stops) read from
    /// `task_struct`.
    pub fn task_offsets(&self) -> Result<TaskOffsets> {
        Ok(TaskOffsets {
            mm: self.offset("task_struct", &["mm"])?,
            pid: self.offset("task_struct", &["pid"])?,
            tgid: self.offset("task_struct", &["tgid"])?,
            signal: self.offset("task_struct", &["signal"])?,
            signal_live: self.offset("signal_struct", &["live"])?,
            ptrace: self.offset("task_struct", &["ptrace"])?,
            parent: self.offset("task_struct", &["parent"])?,
            valid: 1,
        })
    }

    /// What the exec probe reads from the new `mm_struct` under `--stacks`.
    pub fn mm_offsets(&self) -> Result<MmOffsets> {
        let auxv = field_offset_and_type(&self.btf, "mm_struct", &["saved_auxv"])
            .context("BTF: struct mm_struct: saved_auxv")?;
        let Type::Array(array) = auxv.1 else {
            bail!("BTF: mm_struct.saved_auxv is not an array");
        };
        Ok(MmOffsets {
            start_code: self.offset("mm_struct", &["start_code"])?,
            end_code: self.offset("mm_struct", &["end_code"])?,
            saved_auxv: auxv.0,
            saved_auxv_len: array.len() as u32,
            exe_file: self.offset("mm_struct", &["exe_file"])?,
            start_stack: self.offset("mm_struct", &["start_stack"])?,
            _pad: 0,
            valid: 1,
        })
    }

    /// Index of the `write` argument of the `mmap_lock_acquire_returned` tracepoint:
    /// `(mm, memcg_path, write, success)` on 6.1–6.12, `(mm, write, success)` since.
    /// Read from the `btf_trace_*` typedef (a pointer to a prototype whose first
    /// parameter is the tracepoint's private data).
    pub fn mmap_lock_write_arg(&self) -> Result<u32> {
        const TYPEDEF: &str = "btf_trace_mmap_lock_acquire_returned";
        let missing = || {
            anyhow!(
                "BTF in {}: no {TYPEDEF} (a kernel without mmap_lock tracepoints, before 5.10)",
                self.path.display()
            )
        };
        let ty = self
            .btf
            .resolve_types_by_name(TYPEDEF)
            .map_err(|_| missing())?;
        let Some(Type::Typedef(t)) = ty.into_iter().find(|t| matches!(t, Type::Typedef(_))) else {
            return Err(missing());
        };
        let proto = match strip(&self.btf, self.btf.resolve_chained_type(&t)?)? {
            Type::Ptr(p) => self.btf.resolve_chained_type(&p)?,
            other => other,
        };
        let Type::FuncProto(proto) = proto else {
            bail!("{TYPEDEF} is not a function prototype");
        };
        match proto.parameters.len() {
            5 => Ok(2),
            4 => Ok(1),
            n => bail!(
                "{TYPEDEF} has {n} parameters; mmap-trace knows the 6.1 (mm, memcg_path, write, success) and 6.13+ (mm, write, success) forms"
            ),
        }
    }

    /// Whether the syscall tracepoints are faultable (6.13+): they may then run BPF
    /// preemptible (see `kernel::preempt`).
    pub fn faultable_tracepoints(&self) -> bool {
        field_offset(&self.btf, "tracepoint_ext", &["faultable"]).is_ok()
    }

    /// `offsetof(task_struct, thread_info.status)`: the syscall probe tests x86's
    /// `TS_COMPAT` there to skip ia32 syscalls, whose numbers name other calls.
    #[cfg(not(target_arch = "aarch64"))]
    pub fn thread_info_status(&self) -> Result<u32> {
        self.offset("task_struct", &["thread_info", "status"])
    }

    /// The `task_struct` offset of the word whose bit marks a compat (32-bit) syscall:
    /// x86's `thread_info.status` (TS_COMPAT); arm64's `thread_info.flags` (TIF_32BIT).
    /// On arm64 it also checks the `pt_regs` offsets the probes read a syscall's number
    /// and first argument at (the eBPF side's arch/aarch64.rs).
    pub fn compat_mark(&self) -> Result<u32> {
        #[cfg(target_arch = "aarch64")]
        {
            for (field, expected) in [("orig_x0", 272), ("syscallno", 280)] {
                let found = self.offset("pt_regs", &[field])?;
                if found != expected {
                    anyhow::bail!(
                        "this kernel's struct pt_regs has {field} at byte {found}, not \
                         {expected}: the syscall probes would read the wrong register"
                    );
                }
            }
            self.offset("task_struct", &["thread_info", "flags"])
        }
        #[cfg(not(target_arch = "aarch64"))]
        self.thread_info_status()
    }

    /// `offsetof(struct pt_regs, ip)`: the fault probe reads the faulting instruction.
    pub fn pt_regs_ip(&self) -> Result<u32> {
        self.offset("pt_regs", &["ip"])
    }

    /// `offsetof(struct task_struct, maj_flt)`: the fault probe records the thread's count
    /// of faults that needed I/O.
    pub fn task_maj_flt(&self) -> Result<u32> {
        self.offset("task_struct", &["maj_flt"])
    }
}

/// Byte offset of `fields` (a path through nested structs) in `struct ty`.
fn field_offset(btf: &Btf, ty: &str, fields: &[&str]) -> Result<u32> {
    field_offset_and_type(btf, ty, fields).map(|(offset, _)| offset)
}

/// [`field_offset`], and the field's type (typedefs stripped).
fn field_offset_and_type(btf: &Btf, ty: &str, fields: &[&str]) -> Result<(u32, Type)> {
    let mut current = btf
        .resolve_types_by_name(ty)?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| anyhow!("no struct {ty}"))?;
    let mut bits = 0;
    for field in fields {
        let (offset, member_type) =
            find_member(btf, &current, field)?.ok_or_else(|| anyhow!("no member {field}"))?;
        bits += offset;
        current = member_type;
    }
    if bits % 8 != 0 {
        bail!("member is a bitfield");
    }
    Ok((bits / 8, current))
}

/// Finds `name` in a struct or union, looking through anonymous members (the 6.18
/// `vm_area_struct` keeps `vm_start` and `vm_flags` in anonymous unions). Returns its
/// bit offset and its type with typedefs and qualifiers stripped.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<(u32, Type)>> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for member in members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        let member_type = strip(btf, btf.resolve_chained_type(member)?)?;
        if member_name == name {
            return Ok(Some((member.bit_offset(), member_type)));
        }
        if member_name.is_empty()
            && let Some((inner, t)) = find_member(btf, &member_type, name)?
        {
            return Ok(Some((member.bit_offset() + inner, t)));
        }
    }
    Ok(None)
}

fn strip(btf: &Btf, mut ty: Type) -> Result<Type> {
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Const(t) | Type::Volatile(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's kernel: the offsets must be plausible and distinct.
    #[test]
    fn resolves_running_kernel_offsets() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            panic!("{VMLINUX_BTF} missing: this test needs a kernel with BTF");
        }
        let btf = KernelBtf::open(path).unwrap();
        let o = btf.kernel_offsets().unwrap();
        assert!(o.vma_vm_end > o.vma_vm_start, "{o:?}");
        assert!(o.vma_vm_pgoff > o.vma_vm_end, "{o:?}");
        assert_ne!(o.file_dentry, 0, "{o:?}");
        assert_eq!(o.valid, 1);
        // The path walk's offsets: every kernel since 3.3 has struct mount with the
        // vfsmount embedded after mnt_hash, mnt_parent and mnt_mountpoint.
        assert_eq!(o.walk_paths, 1, "{o:?}");
        assert!(
            o.mount_mnt > o.mount_mountpoint && o.mount_mountpoint > o.mount_parent,
            "{o:?}"
        );
        assert_eq!(
            o.file_vfsmount + 8,
            o.file_dentry,
            "struct path is {{ mnt, dentry }}: {o:?}"
        );
        // thread_info is the first member of x86's task_struct; status follows two longs
        // (flags, syscall_work) on every kernel with syscall_work (5.11+).
        assert_eq!(btf.thread_info_status().unwrap(), 16);
        let t = btf.task_offsets().unwrap();
        assert!(t.mm != 0 && t.pid != 0 && t.tgid == t.pid + 4, "{t:?}");
        let m = btf.mm_offsets().unwrap();
        assert_eq!(m.end_code, m.start_code + 8, "{m:?}");
        assert!(m.saved_auxv_len >= 40 && m.exe_file != 0, "{m:?}");
        // 6.18 dropped memcg_path: (mm, write, success).
        assert_eq!(btf.mmap_lock_write_arg().unwrap(), 1);
        // 6.13 made the syscall tracepoints faultable.
        assert!(btf.faultable_tracepoints());
        // x86-64's pt_regs: fifteen general registers, orig_ax, then ip.
        assert_eq!(btf.pt_regs_ip().unwrap(), 16 * 8);
        assert!(
            btf.task_maj_flt().unwrap() > t.tgid,
            "maj_flt comes late in task_struct"
        );
    }

    #[test]
    fn names_missing_fields() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let err = field_offset(&btf, "vm_area_struct", &["no_such_field"]).unwrap_err();
        assert!(err.to_string().contains("no member no_such_field"), "{err}");
    }
}
