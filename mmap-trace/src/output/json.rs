//! The JSON Lines schema (documented in the README). 64-bit quantities that can exceed
//! 2^53 (addresses, lengths, offsets, PFNs, flag words) are `"0x…"` strings. Names the
//! kernel holds as bytes (comms, file names, paths) are strings, with invalid UTF-8
//! replaced by U+FFFD; where that happened, a `…_hex` field beside it has the exact
//! bytes in hex.

use mmap_trace_common::{
    EventHeader, FaultEvent, FileId, MmChangeCause, Probe, RssMember, SyscallEvent, VmaFields, pf,
};
use serde::{Serialize, Serializer};

use crate::{
    kernel::decode::{Event, FilePath},
    output::flags,
};

/// A u64 written as a `"0x…"` string.
#[derive(Clone, Copy, Debug)]
pub struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", self.0))
    }
}

#[derive(Serialize)]
pub struct EventRecord<'a> {
    #[serde(rename = "type")]
    pub record_type: &'static str,
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_hex: Option<String>,
    pub probe: &'static str,
    #[serde(flatten)]
    pub body: Body,
    /// The task's cgroup v2 id, and its path below the cgroup2 root when it could be
    /// named (cgroup.rs); last in the object, as [`append_cgroup`] writes them.
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

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

/// How a call ended: an address, a plain value, or an errno.
#[derive(Serialize, Default)]
pub struct Outcome {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret_addr: Option<Hex>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    /// For calls that return an address on success (mmap, mremap, mmap_region).
    fn address(ret: i64) -> Self {
        if is_error(ret) {
            Self::errno(ret)
        } else {
            Self {
                ret_addr: Some(Hex(ret as u64)),
                ..Self::default()
            }
        }
    }

    /// For calls that return 0 on success (munmap, mprotect, a driver's mmap).
    fn status(ret: i64) -> Self {
        if ret < 0 {
            Self::errno(ret)
        } else {
            Self {
                ret: Some(ret),
                ..Self::default()
            }
        }
    }

    fn errno(ret: i64) -> Self {
        Self {
            ret: Some(ret),
            error: Some(flags::errno_name(ret.saturating_neg())),
            ..Self::default()
        }
    }
}

/// Linux returns -4095..-1 for errors from address-returning calls.
pub fn is_error(ret: i64) -> bool {
    (-4095..0).contains(&ret)
}

/// The bytes of a fixed-size kernel string before its first NUL.
pub fn c_bytes(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())]
}

/// Bytes as a JSON string (invalid UTF-8 replaced) and, only where something was
/// replaced, the exact bytes in lowercase hex.
pub fn text_and_hex(bytes: &[u8]) -> (std::borrow::Cow<'_, str>, Option<String>) {
    let text = String::from_utf8_lossy(bytes);
    let hex = matches!(text, std::borrow::Cow::Owned(_)).then(|| hex(bytes));
    (text, hex)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[derive(Serialize)]
pub struct JsonFile {
    /// `major:minor` in hex, as the dev column of /proc/<pid>/maps.
    pub dev: String,
    pub ino: u64,
    /// The last component of the path.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
}

impl JsonFile {
    fn new(file: &FileId) -> Option<Self> {
        file.is_file().then(|| {
            let (name, name_hex) = text_and_hex(c_bytes(&file.name));
            Self {
                dev: format_dev(file.dev),
                ino: file.ino,
                name: name.into_owned(),
                name_hex,
            }
        })
    }
}

/// An mmap's path: `path` and `path_hex` as for names (module doc); `path_truncated`:
/// the kernel's walk was cut (too deep or too long) and no /proc/<pid>/maps line filled
/// in the rest, so `path` holds the components nearest the file only, without a
/// leading '/'; `path_deleted`: the file was unlinked (or never linked: memfd, a shared
/// mapping of /dev/zero) when it was mapped. The two flags appear only when true.
#[derive(Serialize, Default)]
pub struct JsonPath {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_deleted: bool,
}

impl JsonPath {
    fn new(path: Option<&FilePath>) -> Self {
        let Some(p) = path else {
            return Self::default();
        };
        let (text, hex) = text_and_hex(&p.bytes);
        Self {
            path: Some(text.into_owned()),
            path_hex: hex,
            path_truncated: p.truncated,
            path_deleted: p.deleted,
        }
    }
}

/// The kernel's internal dev_t (major << 20 | minor) as /proc/<pid>/maps prints it.
pub fn format_dev(dev: u32) -> String {
    format!("{:02x}:{:02x}", dev >> 20, dev & 0xfffff)
}

#[derive(Serialize)]
pub struct JsonVma {
    pub vma: Hex,
    pub start: Hex,
    pub end: Hex,
    pub flags: String,
    pub flags_raw: Hex,
    pub pgoff: Hex,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<JsonFile>,
    /// The file's path as the kernel probe walked it.
    #[serde(flatten)]
    pub path: JsonPath,
}

impl JsonVma {
    fn new(v: &VmaFields) -> Self {
        Self {
            vma: Hex(v.vma),
            start: Hex(v.vm_start),
            end: Hex(v.vm_end),
            flags: flags::decode(flags::VM, v.vm_flags),
            flags_raw: Hex(v.vm_flags),
            pgoff: Hex(v.vm_pgoff),
            file: JsonFile::new(&v.file),
            path: JsonPath::new(FilePath::from_kernel(&v.file).as_ref()),
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum Body {
    Mmap {
        addr: Hex,
        len: Hex,
        prot: String,
        prot_raw: u64,
        flags: String,
        flags_raw: u64,
        fd: i32,
        offset: Hex,
        /// The file the fd named as the call returned (the kernel's view).
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<JsonFile>,
        #[serde(flatten)]
        path: JsonPath,
        #[serde(flatten)]
        outcome: Outcome,
    },
    Munmap {
        addr: Hex,
        len: Hex,
        #[serde(flatten)]
        outcome: Outcome,
    },
    Mprotect {
        addr: Hex,
        len: Hex,
        prot: String,
        prot_raw: u64,
        #[serde(flatten)]
        outcome: Outcome,
    },
    Mremap {
        old_addr: Hex,
        old_len: Hex,
        new_len: Hex,
        flags: String,
        flags_raw: u64,
        new_addr: Hex,
        #[serde(flatten)]
        outcome: Outcome,
    },
    Brk {
        addr: Hex,
        ret_addr: Hex,
    },
    MmapRegion {
        addr: Hex,
        len: Hex,
        vm_flags: String,
        vm_flags_raw: Hex,
        pgoff: Hex,
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<JsonFile>,
        /// The file's path as the kernel probe walked it.
        #[serde(flatten)]
        path: JsonPath,
        #[serde(flatten)]
        outcome: Outcome,
    },
    RemapPfnRange {
        vma: JsonVma,
        addr: Hex,
        pfn: Hex,
        size: Hex,
        prot: Hex,
    },
    /// The page-insertion family (`probe` says which function): the first user address
    /// and PFN, the pages asked for, and `kaddr` (vmalloc or physical address) where the
    /// function takes one.
    PageInsert {
        vma: JsonVma,
        addr: Hex,
        pfn: Hex,
        pages: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        kaddr: Option<Hex>,
        /// `mmap_action`: what the driver's mmap_prepare asked for (`remap_pfn`,
        /// `io_remap_pfn`, `simple_io_remap`, `map_kernel_pages`).
        #[serde(skip_serializing_if = "Option::is_none")]
        action: Option<&'static str>,
    },
    /// execve replaced the address space (no fields of its own).
    Exec {},
    PageCache {
        dev: String,
        ino: u64,
        /// Page index in the file.
        index: u64,
        pfn: Hex,
        /// The folio's pages: pfn..pfn+pages hold index..index+pages.
        pages: u64,
    },
    DriverMmap {
        before: JsonVma,
        after: JsonVma,
        #[serde(flatten)]
        outcome: Outcome,
    },
    /// A followed process made a child process.
    Fork {
        child_pid: u32,
        /// The child shares the parent's address space until it execs (vfork, CLONE_VM).
        shares_mm: bool,
    },
    /// The catch-all: the process's mm was write-locked by `cause`.
    MmLock {
        /// `syscall`, `fault` or `kernel` (another task).
        cause: &'static str,
        /// The syscall's name (`cause` syscall).
        #[serde(skip_serializing_if = "Option::is_none")]
        syscall: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        args: Option<[Hex; 6]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ret: Option<i64>,
        /// The process of the task that took the lock (`kernel`: another one).
        locker_pid: u32,
    },
    /// A page fault on a user address (`trace --faults`).
    Fault {
        addr: Hex,
        ip: Hex,
        /// `read`, `write` or `exec` (an instruction fetch).
        access: &'static str,
        /// The page was present: a protection fault (copy-on-write, a write to a
        /// read-only page, a protection key); false: the page was not mapped yet.
        present: bool,
        /// The kernel faulted on the user address inside a syscall (read(2) into a fresh
        /// buffer); `ip` is then the kernel's.
        in_kernel: bool,
        error_code: Hex,
        /// The thread's count of faults that needed I/O before this one (its next fault's
        /// `maj_flt` is one more when this one did).
        maj_flt: u64,
        /// The mapping the address is in, by the address-space model as the fault
        /// happened (absent when the model knows no mapping there: a bad access).
        #[serde(skip_serializing_if = "Option::is_none")]
        vma: Option<FaultVma>,
    },
    /// A resident-set counter of the process moved to another 256 KiB step.
    Rss {
        /// `anon`, `file`, `shmem` or `swap` (the kernel's MM_*PAGES / MM_SWAPENTS).
        member: &'static str,
        /// The counter, exact at this instant, in bytes.
        bytes: i64,
    },
}

fn syscall_body(
    e: &SyscallEvent,
    probe: Probe,
    file: Option<&FileId>,
    path: Option<&FilePath>,
) -> Body {
    let a = e.args;
    match probe {
        Probe::Mmap => Body::Mmap {
            addr: Hex(a[0]),
            len: Hex(a[1]),
            prot: flags::decode(flags::PROT, a[2]),
            prot_raw: a[2],
            flags: flags::decode_map(a[3]),
            flags_raw: a[3],
            fd: a[4] as i32,
            offset: Hex(a[5]),
            file: file.and_then(JsonFile::new),
            path: JsonPath::new(path),
            outcome: Outcome::address(e.ret),
        },
        Probe::Munmap => Body::Munmap {
            addr: Hex(a[0]),
            len: Hex(a[1]),
            outcome: Outcome::status(e.ret),
        },
        Probe::Mprotect => Body::Mprotect {
            addr: Hex(a[0]),
            len: Hex(a[1]),
            prot: flags::decode(flags::PROT, a[2]),
            prot_raw: a[2],
            outcome: Outcome::status(e.ret),
        },
        Probe::Mremap => Body::Mremap {
            old_addr: Hex(a[0]),
            old_len: Hex(a[1]),
            new_len: Hex(a[2]),
            flags: flags::decode(flags::MREMAP, a[3]),
            flags_raw: a[3],
            new_addr: Hex(a[4]),
            outcome: Outcome::address(e.ret),
        },
        // brk(2) returns the (possibly unchanged) break, never an errno.
        _ => Body::Brk {
            addr: Hex(a[0]),
            ret_addr: Hex(e.ret as u64),
        },
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
/// what serializing [`record`] gives (the test below holds them together), without
/// building a `Body` or going through serde's `flatten` buffering. `trace --json` writes
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
            write_outcome(out, &Outcome::address(e.ret));
        }
        Probe::Munmap => {
            hex(out, "addr", a[0]);
            hex(out, "len", a[1]);
            write_outcome(out, &Outcome::status(e.ret));
        }
        Probe::Mprotect => {
            hex(out, "addr", a[0]);
            hex(out, "len", a[1]);
            names(out, "prot", a[2], &prot);
            write_outcome(out, &Outcome::status(e.ret));
        }
        Probe::Mremap => {
            hex(out, "old_addr", a[0]);
            hex(out, "old_len", a[1]);
            hex(out, "new_len", a[2]);
            names(out, "flags", a[3], &|out, v| {
                flags::write_names(out, flags::MREMAP, v)
            });
            hex(out, "new_addr", a[4]);
            write_outcome(out, &Outcome::address(e.ret));
        }
        _ => {
            hex(out, "addr", a[0]);
            hex(out, "ret_addr", e.ret as u64);
        }
    }
    out.push(b'}');
}

/// The JSON line (without newline) of a fault record appended to `out`: byte for byte
/// what serializing [`fault_record`] gives (the test below holds them together). A 1 GiB
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
    let Body::Fault {
        addr,
        ip,
        access,
        present,
        in_kernel,
        error_code,
        maj_flt,
        ..
    } = fault_body(e, None)
    else {
        unreachable!("fault_body makes a Fault");
    };
    hex(out, "addr", addr.0);
    hex(out, "ip", ip.0);
    key_start(out, "access");
    write_str(out, access);
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

/// The mapping a fault hit: its range as the model has it, perms and name (maps'
/// columns).
#[derive(Serialize, Clone, Debug)]
pub struct FaultVma {
    pub start: Hex,
    pub end: Hex,
    pub perms: String,
    /// maps' name column: a path, `[heap]`, `[stack]`, or empty for anonymous memory.
    pub name: String,
}

fn fault_body(e: &FaultEvent, vma: Option<FaultVma>) -> Body {
    let access = if e.error_code & pf::INSTR != 0 {
        "exec"
    } else if e.error_code & pf::WRITE != 0 {
        "write"
    } else {
        "read"
    };
    Body::Fault {
        addr: Hex(e.address),
        ip: Hex(e.ip),
        access,
        present: e.error_code & pf::PROT != 0,
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
        rec.body = fault_body(e, vma);
    }
    rec
}

/// `path`: the path of the file an mmap mapped, when there is one (paths.rs).
pub fn record(event: &Event, path: Option<FilePath>) -> EventRecord<'_> {
    let header = event.header();
    let probe = event.probe();
    let body = match event {
        Event::Syscall(e) => syscall_body(e, probe, None, path.as_ref()),
        Event::Mmap(e) => syscall_body(&e.call, probe, event.mmap_file(), path.as_ref()),
        Event::MmapRegion(e) => Body::MmapRegion {
            addr: Hex(e.addr),
            len: Hex(e.len),
            vm_flags: flags::decode(flags::VM, e.vm_flags),
            vm_flags_raw: Hex(e.vm_flags),
            pgoff: Hex(e.pgoff),
            file: JsonFile::new(&e.file),
            path: JsonPath::new(FilePath::from_kernel(&e.file).as_ref()),
            outcome: Outcome::address(e.ret),
        },
        Event::RemapPfn(e) => Body::RemapPfnRange {
            vma: JsonVma::new(&e.vma),
            addr: Hex(e.addr),
            pfn: Hex(e.pfn),
            size: Hex(e.size),
            prot: Hex(e.prot),
        },
        Event::PageInsert(e) => Body::PageInsert {
            vma: JsonVma::new(&e.vma),
            addr: Hex(e.addr),
            pfn: Hex(e.pfn),
            pages: e.pages,
            kaddr: (e.kaddr != 0).then_some(Hex(e.kaddr)),
            action: (e.header.probe == Probe::MmapAction as u32).then(|| {
                mmap_trace_common::MMAP_ACTION_NAMES
                    .get(e.action as usize)
                    .copied()
                    .unwrap_or("unknown")
            }),
        },
        Event::DriverMmap(e) => Body::DriverMmap {
            before: JsonVma::new(&e.before),
            after: JsonVma::new(&e.after),
            outcome: Outcome::status(e.ret),
        },
        Event::Exec(_) => Body::Exec {},
        Event::Fork(e) => Body::Fork {
            child_pid: e.child_pid,
            shares_mm: e.shares_mm != 0,
        },
        Event::MmChange(e) => {
            let syscall = e.cause == MmChangeCause::Syscall as u32;
            Body::MmLock {
                cause: crate::kernel::syscall_names::cause_name(e.cause),
                syscall: syscall.then(|| crate::kernel::syscall_names::name(e.nr, e.compat != 0)),
                args: syscall.then(|| e.args.map(Hex)),
                ret: syscall.then_some(e.ret),
                locker_pid: e.locker_pid,
            }
        }
        Event::PageCache(e) => Body::PageCache {
            dev: format_dev(e.dev),
            ino: e.ino,
            index: e.index,
            pfn: Hex(e.pfn),
            pages: 1 << e.order.min(20),
        },
        Event::Fault(e) => fault_body(e, None),
        Event::Rss(e) => Body::Rss {
            member: RssMember::from_u32(e.member).map_or("unknown", RssMember::name),
            bytes: e.bytes,
        },
    };
    let (comm, comm_hex) = text_and_hex(c_bytes(&header.comm));
    EventRecord {
        record_type: "event",
        ts_ns: header.ts_ns,
        pid: header.pid,
        tid: header.tid,
        comm,
        comm_hex,
        probe: probe.name(),
        body,
        cgroup_id: header.cgroup_id,
        cgroup: None,
    }
}

#[cfg(test)]
mod fast_path_tests {

    use super::*;

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
                    let expected = serde_json::to_vec(&rec).unwrap();
                    line.clear();
                    write_fault(&mut line, &e, vma.as_ref());
                    append_cgroup(&mut line, e.header.cgroup_id, rec.cgroup.as_deref());
                    assert_eq!(
                        String::from_utf8_lossy(&line),
                        String::from_utf8_lossy(&expected)
                    );
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
                            let expected = serde_json::to_vec(&rec).unwrap();
                            line.clear();
                            write_syscall(&mut line, &e, probe, event.mmap_file(), path.as_ref());
                            append_cgroup(&mut line, e.header.cgroup_id, cgroup);
                            assert_eq!(
                                String::from_utf8_lossy(&line),
                                String::from_utf8_lossy(&expected)
                            );
                        }
                    }
                }
            }
        }
    }
}
