//! Kernel struct field offsets from the running kernel's BTF, handed to the kernel
//! probes as the `OFFSETS` global (Rust eBPF has no CO-RE field relocations, and these
//! offsets differ between, e.g., the 6.1 guest and the 6.18 host).

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use mmap_trace_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets> {
    let btf = Btf::from_file(path).with_context(|| {
        format!(
            "cannot read kernel BTF from {}: the kernel probes need a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (or pass --btf PATH)",
            path.display()
        )
    })?;
    let offset = |ty: &str, fields: &[&str]| {
        field_offset(&btf, ty, fields)
            .with_context(|| format!("BTF in {}: struct {ty}: {}", path.display(), fields.join(".")))
    };
    Ok(KernelOffsets {
        vma_vm_start: offset("vm_area_struct", &["vm_start"])?,
        vma_vm_end: offset("vm_area_struct", &["vm_end"])?,
        vma_vm_flags: offset("vm_area_struct", &["vm_flags"])?,
        vma_vm_pgoff: offset("vm_area_struct", &["vm_pgoff"])?,
        vma_vm_file: offset("vm_area_struct", &["vm_file"])?,
        file_f_inode: offset("file", &["f_inode"])?,
        file_dentry: offset("file", &["f_path", "dentry"])?,
        dentry_name: offset("dentry", &["d_name", "name"])?,
        inode_i_ino: offset("inode", &["i_ino"])?,
        inode_i_sb: offset("inode", &["i_sb"])?,
        sb_s_dev: offset("super_block", &["s_dev"])?,
        valid: 1,
    })
}

/// Byte offset of `fields` (a path through nested structs) in `struct ty`.
fn field_offset(btf: &Btf, ty: &str, fields: &[&str]) -> Result<u32> {
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
    Ok(bits / 8)
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
        let o = kernel_offsets(path).unwrap();
        assert!(o.vma_vm_end > o.vma_vm_start, "{o:?}");
        assert!(o.vma_vm_pgoff > o.vma_vm_end, "{o:?}");
        assert_ne!(o.file_dentry, 0, "{o:?}");
        assert_eq!(o.valid, 1);
    }

    #[test]
    fn names_missing_fields() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let err = field_offset(&btf, "vm_area_struct", &["no_such_field"]).unwrap_err();
        assert!(err.to_string().contains("no member no_such_field"), "{err}");
    }
}
