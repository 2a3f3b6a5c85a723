//! Events as JSON Lines records. The record types are the schema's ([`crate::schema`]);
//! here [`record`] fills an [`EventRecord`] from a decoded event, and the hot path writes
//! the two most frequent records by hand ([`write_syscall`], [`write_fault`]): byte for
//! byte what serde writes for the record, which the tests below check, together with
//! reading the hand-written line back into the record.

use mmap_trace_common::{
    EventHeader, FaultEvent, FileId, MmChangeCause, Probe, RssMember, SyscallEvent, VmaFields, pf,
};

use crate::{
    kernel::decode::{Event, FilePath, is_error},
    output::flags,
    schema::{
        Access, Body, Brk, DriverMmap, EventRecord, Fault, FaultVma, File, Fork, Hex, MmLock, Mmap,
        MmapRegion, Mprotect, Mremap, Munmap, Outcome, PageCache, PageInsert, PathFields,
        RemapPfnRange, Rss, Vma, text_and_hex,
    },
};

/// Appends `"cgroup_id"` and `"cgroup"` to a JSON object just written into `out` (its
/// closing brace last): the fast path's equivalent of [`EventRecord`]'s last fields.
pub fn append_cgroup(out: &mut Vec<u8>, id: u64, name: Option<&str>) {
    if out.last() == Some(&b'}') {
        out.pop();
    }
    out.extend_from_slice(br#","cgroup_id":"#);
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    if let Some(name) = name {
        key_start(out, "cgroup");
        write_str(out, name);
    }
    out.push(b'}');
}

/// For calls that return an address on success (mmap, mremap, mmap_region).
fn address_outcome(ret: i64) -> Outcome {
    if is_error(ret) {
        errno_outcome(ret)
    } else {
        Outcome {
            ret_addr: Some(Hex(ret as u64)),
            ..Outcome::default()
        }
    }
}

/// For calls that return 0 on success (munmap, mprotect, a driver's mmap).
fn status_outcome(ret: i64) -> Outcome {
    if ret < 0 {
        errno_outcome(ret)
    } else {
        Outcome {
            ret: Some(ret),
            ..Outcome::default()
        }
    }
}

fn errno_outcome(ret: i64) -> Outcome {
    Outcome {
        ret: Some(ret),
        error: Some(flags::errno_name(ret.saturating_neg())),
        ..Outcome::default()
    }
}

/// The bytes of a fixed-size kernel string before its first NUL.
pub fn c_bytes(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())]
}

/// The file a record names, when it is one.
fn file(file: &FileId) -> Option<File> {
    file.is_file().then(|| {
        let (name, name_hex) = text_and_hex(c_bytes(&file.name));
        File {
            dev: format_dev(file.dev),
            ino: file.ino,
            name: name.into_owned(),
            name_hex,
        }
    })
}

fn path_fields(path: Option<&FilePath>) -> PathFields {
    let Some(p) = path else {
        return PathFields::default();
    };
    let (text, hex) = text_and_hex(&p.bytes);
    PathFields {
        path: Some(text.into_owned()),
        path_hex: hex,
        path_truncated: p.truncated,
        path_deleted: p.deleted,
    }
}

/// The kernel's internal dev_t (major << 20 | minor) as /proc/<pid>/maps prints it.
pub fn format_dev(dev: u32) -> String {
    format!("{:02x}:{:02x}", dev >> 20, dev & 0xfffff)
}

fn vma(v: &VmaFields) -> Vma {
    Vma {
        vma: Hex(v.vma),
        start: Hex(v.vm_start),
        end: Hex(v.vm_end),
        flags: flags::decode(flags::VM, v.vm_flags),
        flags_raw: Hex(v.vm_flags),
        pgoff: Hex(v.vm_pgoff),
        file: file(&v.file),
        path: path_fields(FilePath::from_kernel(&v.file).as_ref()),
    }
}

fn syscall_body(
    e: &SyscallEvent,
    probe: Probe,
    file: Option<&FileId>,
    path: Option<&FilePath>,
) -> Body {
    let a = e.args;
    match probe {
        Probe::Mmap => Body::Mmap(Mmap {
            addr: Hex(a[0]),
            len: Hex(a[1]),
            prot: flags::decode(flags::PROT, a[2]),
            prot_raw: a[2],
            flags: flags::decode_map(a[3]),
            flags_raw: a[3],
            fd: a[4] as i32,
            offset: Hex(a[5]),
            file: file.and_then(self::file),
            path: path_fields(path),
            outcome: address_outcome(e.ret),
        }),
        Probe::Munmap => Body::Munmap(Munmap {
            addr: Hex(a[0]),
            len: Hex(a[1]),
            outcome: status_outcome(e.ret),
        }),
        Probe::Mprotect => Body::Mprotect(Mprotect {
            addr: Hex(a[0]),
            len: Hex(a[1]),
            prot: flags::decode(flags::PROT, a[2]),
            prot_raw: a[2],
            outcome: status_outcome(e.ret),
        }),
        Probe::Mremap => Body::Mremap(Mremap {
            old_addr: Hex(a[0]),
            old_len: Hex(a[1]),
            new_len: Hex(a[2]),
            flags: flags::decode(flags::MREMAP, a[3]),
            flags_raw: a[3],
            new_addr: Hex(a[4]),
            outcome: address_outcome(e.ret),
        }),
        // brk(2) returns the (possibly unchanged) break, never an errno.
        _ => Body::Brk(Brk {
            addr: Hex(a[0]),
            ret_addr: Hex(e.ret as u64),
        }),
    }
}

/// A page-insertion function's record: one variant per function, the same fields.
fn page_insert_body(probe: Probe, fields: PageInsert) -> Body {
    match probe {
        Probe::VmInsertPages => Body::VmInsertPages(fields),
        Probe::VmfInsertPfn => Body::VmfInsertPfn(fields),
        Probe::VmfInsertMixed => Body::VmfInsertMixed(fields),
        Probe::VmIomapMemory => Body::VmIomapMemory(fields),
        Probe::RemapVmallocRange => Body::RemapVmallocRange(fields),
        Probe::MmapAction => Body::MmapAction(fields),
        _ => Body::VmInsertPage(fields),
    }
}

/// `{"type":"event","ts_ns":…,"pid":…,"tid":…,"comm":…,"probe":"…"`: the start every
/// hand-written event line shares (no closing brace).
fn write_event_start(out: &mut Vec<u8>, h: &EventHeader, probe: Probe) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(br#"{"type":"event","ts_ns":"#);
    out.extend_from_slice(num.format(h.ts_ns).as_bytes());
    out.extend_from_slice(br#","pid":"#);
    out.extend_from_slice(num.format(h.pid).as_bytes());
    out.extend_from_slice(br#","tid":"#);
    out.extend_from_slice(num.format(h.tid).as_bytes());
    write_bytes(out, "comm", c_bytes(&h.comm));
    out.extend_from_slice(br#","probe":""#);
    out.extend_from_slice(probe.name().as_bytes());
    out.push(b'"');
}

/// The JSON line (without newline) of a syscall record appended to `out`: byte for byte
/// what serializing [`record`] gives (the tests below hold them together, and read it
/// back into the schema's record), without building a `Body` or going through serde. `trace --json` writes
/// one of these per traced call, so this is its hot path. `file`: [`Event::mmap_file`].
pub fn write_syscall(
    out: &mut Vec<u8>,
    e: &SyscallEvent,
    probe: Probe,
    file: Option<&FileId>,
    path: Option<&FilePath>,
) {
    let h = &e.header;
    let mut num = itoa::Buffer::new();
    write_event_start(out, h, probe);
    let hex = |out: &mut Vec<u8>, key: &str, v: u64| {
        key_start(out, key);
        out.push(b'"');
        flags::write_hex(out, v);
        out.push(b'"');
    };
    // Flag names are [A-Z0-9_|x] only: nothing to escape.
    let names = |out: &mut Vec<u8>, key: &str, raw: u64, write: &dyn Fn(&mut Vec<u8>, u64)| {
        key_start(out, key);
        out.push(b'"');
        write(out, raw);
        out.extend_from_slice(b"\",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"_raw\":");
        out.extend_from_slice(itoa::Buffer::new().format(raw).as_bytes());
    };
    let prot = |out: &mut Vec<u8>, v: u64| flags::write_names(out, flags::PROT, v);
    let a = e.args;
    match probe {
        Probe::Mmap => {
            hex(out, "addr", a[0]);
            hex(out, "len", a[1]);
            names(out, "prot", a[2], &prot);
            names(out, "flags", a[3], &flags::write_map_names);
            key_start(out, "fd");
            out.extend_from_slice(num.format(a[4] as i32).as_bytes());
            hex(out, "offset", a[5]);
            if let Some(f) = file {
                key_start(out, "file");
                out.extend_from_slice(br#"{"dev":""#);
                out.extend_from_slice(format_dev(f.dev).as_bytes());
                out.extend_from_slice(br#"","ino":"#);
                out.extend_from_slice(num.format(f.ino).as_bytes());
                write_bytes(out, "name", c_bytes(&f.name));
                out.push(b'}');
            }
            if let Some(path) = path {
                write_bytes(out, "path", &path.bytes);
                if path.truncated {
                    out.extend_from_slice(br#","path_truncated":true"#);
                }
                if path.deleted {
                    out.extend_from_slice(br#","path_deleted":true"#);
                }
            }
            write_outcome(out, &address_outcome(e.ret));
        }
        Probe::Munmap => {
            hex(out, "addr", a[0]);
            hex(out, "len", a[1]);
            write_outcome(out, &status_outcome(e.ret));
        }
        Probe::Mprotect => {
            hex(out, "addr", a[0]);
            hex(out, "len", a[1]);
            names(out, "prot", a[2], &prot);
            write_outcome(out, &status_outcome(e.ret));
        }
        Probe::Mremap => {
            hex(out, "old_addr", a[0]);
            hex(out, "old_len", a[1]);
            hex(out, "new_len", a[2]);
            names(out, "flags", a[3], &|out, v| {
                flags::write_names(out, flags::MREMAP, v)
            });
            hex(out, "new_addr", a[4]);
            write_outcome(out, &address_outcome(e.ret));
        }
        _ => {
            hex(out, "addr", a[0]);
            hex(out, "ret_addr", e.ret as u64);
        }
    }
    out.push(b'}');
}

/// The JSON line (without newline) of a fault record appended to `out`: byte for byte
/// what serializing [`fault_record`] gives (the tests below hold them together). A 1 GiB
/// memset is 262,144 of these: the reader's time per line is what decides whether the
/// ring buffer overflows.
pub fn write_fault(out: &mut Vec<u8>, e: &FaultEvent, vma: Option<&FaultVma>) {
    let h = &e.header;
    let mut num = itoa::Buffer::new();
    let hex = |out: &mut Vec<u8>, key: &str, v: u64| {
        key_start(out, key);
        out.push(b'"');
        flags::write_hex(out, v);
        out.push(b'"');
    };
    let boolean = |out: &mut Vec<u8>, key: &str, v: bool| {
        key_start(out, key);
        out.extend_from_slice(if v { b"true" } else { b"false" });
    };
    write_event_start(out, h, Probe::Fault);
    let Fault {
        addr,
        ip,
        access,
        present,
        in_kernel,
        error_code,
        maj_flt,
        ..
    } = fault_body(e, None);
    hex(out, "addr", addr.0);
    hex(out, "ip", ip.0);
    key_start(out, "access");
    write_str(out, access.name());
    boolean(out, "present", present);
    boolean(out, "in_kernel", in_kernel);
    hex(out, "error_code", error_code.0);
    key_start(out, "maj_flt");
    out.extend_from_slice(num.format(maj_flt).as_bytes());
    if let Some(v) = vma {
        key_start(out, "vma");
        out.push(b'{');
        out.extend_from_slice(br#""start":""#);
        flags::write_hex(out, v.start.0);
        out.extend_from_slice(br#"","end":""#);
        flags::write_hex(out, v.end.0);
        out.push(b'"');
        key_start(out, "perms");
        write_str(out, &v.perms);
        key_start(out, "name");
        write_str(out, &v.name);
        out.push(b'}');
    }
    out.push(b'}');
}

/// `,"key":`
fn key_start(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// `,"key":"…"` for bytes, and `,"key_hex":"…"` after it where they are not UTF-8.
fn write_bytes(out: &mut Vec<u8>, key: &str, bytes: &[u8]) {
    key_start(out, key);
    let (text, hex) = text_and_hex(bytes);
    write_str(out, &text);
    if let Some(hex) = hex {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"_hex\":\"");
        out.extend_from_slice(hex.as_bytes());
        out.push(b'"');
    }
}

/// A JSON string: printable ASCII without quotes or backslashes as it is (comms and
/// paths nearly always are), anything else through serde_json's escaping.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writes into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn write_outcome(out: &mut Vec<u8>, o: &Outcome) {
    if let Some(ret) = o.ret {
        key_start(out, "ret");
        out.extend_from_slice(itoa::Buffer::new().format(ret).as_bytes());
    }
    if let Some(Hex(addr)) = o.ret_addr {
        key_start(out, "ret_addr");
        out.push(b'"');
        flags::write_hex(out, addr);
        out.push(b'"');
    }
    if let Some(error) = &o.error {
        key_start(out, "error");
        write_str(out, error);
    }
}

fn fault_body(e: &FaultEvent, vma: Option<FaultVma>) -> Fault {
    let access = if e.error_code & pf::ACCESS_UNKNOWN != 0 {
        Access::Unknown
    } else if e.error_code & pf::INSTR != 0 {
        Access::Exec
    } else if e.error_code & pf::WRITE != 0 {
        Access::Write
    } else {
        Access::Read
    };
    Fault {
        addr: Hex(e.address),
        ip: Hex(e.ip),
        access,
        present: e.error_code & (pf::PROT | pf::ACCESS_UNKNOWN) == pf::PROT,
        in_kernel: e.in_kernel != 0,
        error_code: Hex(e.error_code),
        maj_flt: e.maj_flt,
        vma,
    }
}

/// A fault's record with the mapping it hit, through serde: what [`write_fault`] must
/// write byte for byte.
#[cfg(test)]
pub fn fault_record(event: &Event, vma: Option<FaultVma>) -> EventRecord<'_> {
    let mut rec = record(event, None);
    if let Event::Fault(e) = event {
        rec.body = Body::Fault(fault_body(e, vma));
    }
    rec
}

/// `path`: the path of the file an mmap mapped, when there is one (process/paths.rs).
pub fn record(event: &Event, path: Option<FilePath>) -> EventRecord<'_> {
    let header = event.header();
    let probe = event.probe();
    let body = match event {
        Event::Syscall(e) => syscall_body(e, probe, None, path.as_ref()),
        Event::Mmap(e) => syscall_body(&e.call, probe, event.mmap_file(), path.as_ref()),
        Event::MmapRegion(e) => Body::MmapRegion(MmapRegion {
            addr: Hex(e.addr),
            len: Hex(e.len),
            vm_flags: flags::decode(flags::VM, e.vm_flags),
            vm_flags_raw: Hex(e.vm_flags),
            pgoff: Hex(e.pgoff),
            file: file(&e.file),
            path: path_fields(FilePath::from_kernel(&e.file).as_ref()),
            outcome: address_outcome(e.ret),
        }),
        Event::RemapPfn(e) => Body::RemapPfnRange(RemapPfnRange {
            vma: vma(&e.vma),
            addr: Hex(e.addr),
            pfn: Hex(e.pfn),
            size: Hex(e.size),
            prot: Hex(e.prot),
        }),
        Event::PageInsert(e) => page_insert_body(
            probe,
            PageInsert {
                vma: vma(&e.vma),
                addr: Hex(e.addr),
                pfn: Hex(e.pfn),
                pages: e.pages,
                kaddr: (e.kaddr != 0).then_some(Hex(e.kaddr)),
                action: (probe == Probe::MmapAction).then(|| {
                    mmap_trace_common::MMAP_ACTION_NAMES
                        .get(e.action as usize)
                        .copied()
                        .unwrap_or("unknown")
                        .to_owned()
                }),
            },
        ),
        Event::DriverMmap(e) => Body::DriverMmap(DriverMmap {
            before: vma(&e.before),
            after: vma(&e.after),
            outcome: status_outcome(e.ret),
        }),
        Event::Exec(_) => Body::Exec,
        Event::Exit(_) => Body::Exit,
        Event::Fork(e) => Body::Fork(Fork {
            child_pid: e.child_pid,
            shares_mm: e.shares_mm != 0,
        }),
        Event::MmChange(e) => {
            let syscall = e.cause == MmChangeCause::Syscall as u32;
            Body::MmLock(MmLock {
                cause: crate::kernel::syscall_names::cause_name(e.cause).to_owned(),
                syscall: syscall.then(|| crate::kernel::syscall_names::name(e.nr, e.compat != 0)),
                args: syscall.then(|| e.args.map(Hex)),
                ret: syscall.then_some(e.ret),
                locker_pid: e.locker_pid,
            })
        }
        Event::PageCache(e) => Body::PageCache(PageCache {
            dev: format_dev(e.dev),
            ino: e.ino,
            index: e.index,
            pfn: Hex(e.pfn),
            pages: 1 << e.order.min(20),
        }),
        Event::Fault(e) => Body::Fault(fault_body(e, None)),
        Event::Rss(e) => Body::Rss(Rss {
            member: RssMember::from_u32(e.member)
                .map_or("unknown", RssMember::name)
                .to_owned(),
            bytes: e.bytes,
        }),
    };
    let (comm, comm_hex) = text_and_hex(c_bytes(&header.comm));
    EventRecord {
        ts_ns: header.ts_ns,
        pid: header.pid,
        tid: header.tid,
        comm,
        comm_hex,
        body,
        stack: None,
        cgroup_id: header.cgroup_id,
        cgroup: None,
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;
    use crate::schema::Tagged;

    /// A hand-written line read back into the schema's record and written again by serde
    /// must come out byte for byte: the fast path writes nothing the schema cannot hold.
    fn assert_reads_back(line: &[u8]) {
        let record: EventRecord<'_> = serde_json::from_slice(line)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
        let again = serde_json::to_vec(&Tagged::new(&record)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(line)
        );
    }

    /// `write_fault` must give exactly the bytes serde gives for `fault_record`.
    #[test]
    fn write_fault_matches_serde() {
        let comms: [&[u8]; 3] = [b"mmap-workload", b"q\"uo\\te\n\x01", b"\xff\xfebad"];
        let vmas = [
            None,
            Some(FaultVma {
                start: Hex(0x7f00_0000_0000),
                end: Hex(0x7f00_0000_4000),
                perms: "rw-p".into(),
                name: String::new(),
            }),
            Some(FaultVma {
                start: Hex(0x5555_0000_0000),
                end: Hex(0x5555_0002_1000),
                perms: "r-xp".into(),
                name: "/tmp/a \"b\"\n\u{e9}".into(),
            }),
        ];
        let mut line = Vec::new();
        for comm in comms {
            for error_code in [0u64, 0x4, 0x6, 0x7, 0x14, 0x2, 0x25] {
                for vma in &vmas {
                    let mut e = crate::kernel::decode::test_fault_event(comm);
                    e.error_code = error_code;
                    e.in_kernel = u32::from(error_code & pf::USER == 0);
                    e.maj_flt = error_code * 1_000_000_007;
                    let event = Event::Fault(e);
                    let mut rec = fault_record(&event, vma.clone());
                    rec.cgroup = Some("/system.slice/a b.service".into());
                    let expected = serde_json::to_vec(&Tagged::new(&rec)).unwrap();
                    line.clear();
                    write_fault(&mut line, &e, vma.as_ref());
                    append_cgroup(&mut line, e.header.cgroup_id, rec.cgroup.as_deref());
                    assert_eq!(
                        String::from_utf8_lossy(&line),
                        String::from_utf8_lossy(&expected)
                    );
                    assert_reads_back(&line);
                }
            }
        }
    }

    /// `write_syscall` must give exactly the bytes serde gives for `record`.
    #[test]
    fn write_syscall_matches_serde() {
        let probes = [
            Probe::Mmap,
            Probe::Munmap,
            Probe::Mprotect,
            Probe::Mremap,
            Probe::Brk,
        ];
        let rets = [
            0i64,
            5,
            -1,
            -22,
            -4095,
            -4096,
            0x7f12_3456_7000,
            i64::MIN,
            i64::MAX,
        ];
        let args = [
            [0, 16384, 3, 0x22, u64::MAX, 0],
            [0x7f00_0000_1000, 4096, 0, 0x1 | 0x10 | 0x8000_0000, 3, 4096],
            [u64::MAX, u64::MAX, 0x7 | 0x100, 0x3 | 0x40, 7, u64::MAX],
            [1, 2, 0x1000_0000, 0, 0x8000_0000, 5],
        ];
        let comms: [&[u8]; 4] = [
            b"mmap-workload",
            b"q\"uo\\te\n\x01",
            b"\xff\xfebad",
            b"exactly15bytes!",
        ];
        let path = |bytes: &[u8], truncated, deleted| {
            Some(FilePath {
                bytes: bytes.to_vec(),
                truncated,
                deleted,
            })
        };
        let paths = [
            None,
            path(b"/tmp/a file", false, false),
            path("/x/\"quoted\"\t\u{e9}".as_bytes(), false, true),
            path(b"/tmp/\xff\xfe-bin\n", false, false),
            path(b"lib/deep", true, false),
            path(b"e/\x80", true, true),
        ];
        let file = |dev: u32, ino: u64, name: &[u8]| {
            let mut f = FileId {
                dev,
                flags: 0,
                name_len: 0,
                ino,
                name: [0; mmap_trace_common::FILE_NAME_LEN],
            };
            f.name[..name.len()].copy_from_slice(name);
            f
        };
        let files = [
            None,
            Some(file(0, 0, b"")),
            Some(file(0xfe << 20, 326_279, b"libc.so.6")),
            Some(file(5, u64::MAX, b"we\"ird\n\xff name")),
        ];
        let mut line = Vec::new();
        for probe in probes {
            for ret in rets {
                for a in args {
                    for comm in comms {
                        for (path, f) in
                            paths.iter().flat_map(|p| files.iter().map(move |f| (p, f)))
                        {
                            let e = crate::kernel::decode::test_syscall_event(probe, comm, a, ret);
                            let event = crate::kernel::decode::test_event(e, *f);
                            let cgroup = path.as_ref().map(|_| "/sys\"tem.slice/a b.service");
                            let mut rec = record(&event, path.clone());
                            rec.cgroup = cgroup.map(str::to_owned);
                            let expected = serde_json::to_vec(&Tagged::new(&rec)).unwrap();
                            line.clear();
                            write_syscall(&mut line, &e, probe, event.mmap_file(), path.as_ref());
                            append_cgroup(&mut line, e.header.cgroup_id, cgroup);
                            assert_eq!(
                                String::from_utf8_lossy(&line),
                                String::from_utf8_lossy(&expected)
                            );
                            assert_reads_back(&line);
                        }
                    }
                }
            }
        }
    }

    /// Each page-insertion function's records are tagged with its probe's name.
    #[test]
    fn page_insert_records_name_their_probe() {
        let vma = Vma {
            vma: Hex(0xffff_8880_0000_0000),
            start: Hex(0x7f00_0000_0000),
            end: Hex(0x7f00_0000_4000),
            flags: "READ".into(),
            flags_raw: Hex(1),
            pgoff: Hex(0),
            file: None,
            path: PathFields::default(),
        };
        for probe in Probe::ALL.iter().copied().filter(|p| p.is_page_insert()) {
            let fields = PageInsert {
                vma: vma.clone(),
                addr: Hex(0x7f00_0000_0000),
                pfn: Hex(0x1234),
                pages: 1,
                kaddr: None,
                action: None,
            };
            let json = serde_json::to_value(page_insert_body(probe, fields)).unwrap();
            assert_eq!(json["probe"], probe.name(), "{json}");
        }
    }
}
