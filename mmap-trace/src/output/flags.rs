//! Flag words decoded to the names a reader knows: PROT_*, MAP_*, MREMAP_*, VM_*, errno.

use mmtrace_driver_abi::vm;

/// A flag table: (bit, name). Bits not in the table are shown as hex.
type Table = &'static [(u64, &'static str)];

pub const PROT: Table = &[
    (libc::PROT_READ as u64, "READ"),
    (libc::PROT_WRITE as u64, "WRITE"),
    (libc::PROT_EXEC as u64, "EXEC"),
    (libc::PROT_GROWSDOWN as u64, "GROWSDOWN"),
    (libc::PROT_GROWSUP as u64, "GROWSUP"),
];

pub const MAP: Table = &[
    (libc::MAP_SHARED as u64, "SHARED"),
    (libc::MAP_PRIVATE as u64, "PRIVATE"),
    (libc::MAP_FIXED as u64, "FIXED"),
    (libc::MAP_ANONYMOUS as u64, "ANONYMOUS"),
    // x86-64 only (arm64 has no such flag).
    #[cfg(target_arch = "x86_64")]
    (libc::MAP_32BIT as u64, "32BIT"),
    (libc::MAP_GROWSDOWN as u64, "GROWSDOWN"),
    (libc::MAP_DENYWRITE as u64, "DENYWRITE"),
    (libc::MAP_EXECUTABLE as u64, "EXECUTABLE"),
    (libc::MAP_LOCKED as u64, "LOCKED"),
    (libc::MAP_NORESERVE as u64, "NORESERVE"),
    (libc::MAP_POPULATE as u64, "POPULATE"),
    (libc::MAP_NONBLOCK as u64, "NONBLOCK"),
    (libc::MAP_STACK as u64, "STACK"),
    (libc::MAP_HUGETLB as u64, "HUGETLB"),
    (libc::MAP_SYNC as u64, "SYNC"),
    (libc::MAP_FIXED_NOREPLACE as u64, "FIXED_NOREPLACE"),
];

pub const MREMAP: Table = &[
    (libc::MREMAP_MAYMOVE as u64, "MAYMOVE"),
    (libc::MREMAP_FIXED as u64, "FIXED"),
    (4, "DONTUNMAP"),
];

/// `vm_flags` bits from include/linux/mm.h (stable across 6.1 and 6.18 for these); the
/// bits other modules test by name live in `mmtrace_driver_abi::vm`.
pub const VM: Table = &[
    (vm::READ, "READ"),
    (vm::WRITE, "WRITE"),
    (vm::EXEC, "EXEC"),
    (vm::SHARED, "SHARED"),
    (vm::MAYREAD, "MAYREAD"),
    (vm::MAYWRITE, "MAYWRITE"),
    (vm::MAYEXEC, "MAYEXEC"),
    (vm::MAYSHARE, "MAYSHARE"),
    (vm::GROWSDOWN, "GROWSDOWN"),
    (0x200, "UFFD_MISSING"),
    (vm::PFNMAP, "PFNMAP"),
    (0x1000, "UFFD_WP"),
    (0x2000, "LOCKED"),
    (vm::IO, "IO"),
    (0x8000, "SEQ_READ"),
    (0x10000, "RAND_READ"),
    (0x20000, "DONTCOPY"),
    (vm::DONTEXPAND, "DONTEXPAND"),
    (0x80000, "LOCKONFAULT"),
    (0x100000, "ACCOUNT"),
    (0x200000, "NORESERVE"),
    (0x400000, "HUGETLB"),
    (0x800000, "SYNC"),
    (0x1000000, "PAT"),
    (0x2000000, "WIPEONFORK"),
    (vm::DONTDUMP, "DONTDUMP"),
    (0x8000000, "SOFTDIRTY"),
    (vm::MIXEDMAP, "MIXEDMAP"),
    (0x20000000, "HUGEPAGE"),
    (0x40000000, "NOHUGEPAGE"),
    (0x80000000, "MERGEABLE"),
];

/// `READ|WRITE|0x100000`; `0` as `NONE`.
pub fn decode(table: Table, value: u64) -> String {
    let mut out = Vec::new();
    write_names(&mut out, table, value);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends what [`decode`] returns to `out` (no allocation: the JSON hot path).
pub fn write_names(out: &mut Vec<u8>, table: Table, value: u64) {
    let start = out.len();
    let mut rest = value;
    for &(bit, name) in table {
        if bit != 0 && value & bit == bit {
            separate(out, start);
            out.extend_from_slice(name.as_bytes());
            rest &= !bit;
        }
    }
    if rest != 0 {
        separate(out, start);
        write_hex(out, rest);
    }
    if out.len() == start {
        out.extend_from_slice(b"NONE");
    }
}

fn separate(out: &mut Vec<u8>, start: usize) {
    if out.len() > start {
        out.push(b'|');
    }
}

/// `{:#x}`: `0x` and lowercase digits, `0x0` for zero.
pub fn write_hex(out: &mut Vec<u8>, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut v = value;
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(b"0x");
    out.extend_from_slice(&buf[i..]);
}

/// MAP_SHARED and MAP_PRIVATE share the 2-bit "type" field; decode it as a type first.
pub fn decode_map(flags: u64) -> String {
    let mut out = Vec::new();
    write_map_names(&mut out, flags);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends what [`decode_map`] returns to `out`.
pub fn write_map_names(out: &mut Vec<u8>, flags: u64) {
    let kind = flags & libc::MAP_TYPE as u64;
    match kind as i32 {
        libc::MAP_SHARED => out.extend_from_slice(b"SHARED"),
        libc::MAP_PRIVATE => out.extend_from_slice(b"PRIVATE"),
        libc::MAP_SHARED_VALIDATE => out.extend_from_slice(b"SHARED_VALIDATE"),
        libc::MAP_DROPPABLE => out.extend_from_slice(b"DROPPABLE"),
        _ => {
            out.extend_from_slice(b"TYPE");
            write_hex(out, kind);
        }
    }
    let rest = flags & !(libc::MAP_TYPE as u64);
    if rest != 0 {
        out.push(b'|');
        write_names(out, &MAP[2..], rest);
    }
}

/// `EINVAL` for 22; the number for unknown ones.
pub fn errno_name(errno: i64) -> String {
    let name = match errno as i32 {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_hex_is_alternate_lower_hex() {
        for v in [
            0,
            1,
            0xf,
            0x10,
            0xdead_beef,
            0x7fff_ffff_f000,
            u64::MAX,
            1 << 63,
        ] {
            let mut out = Vec::new();
            write_hex(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{v:#x}"));
        }
    }

    #[test]
    fn decodes_known_and_unknown_bits() {
        assert_eq!(decode(PROT, 3), "READ|WRITE");
        assert_eq!(decode(PROT, 0), "NONE");
        assert_eq!(decode(PROT, 0x1 | 0x100), "READ|0x100");
        assert_eq!(decode_map(0x22), "PRIVATE|ANONYMOUS");
        assert_eq!(decode_map(0x01 | 0x10), "SHARED|FIXED");
        assert_eq!(
            decode(VM, 0x4000 | 0x400 | 0x40000 | 0x4000000),
            "PFNMAP|IO|DONTEXPAND|DONTDUMP"
        );
        assert_eq!(errno_name(22), "EINVAL");
        assert_eq!(errno_name(4095), "E4095");
    }
}
