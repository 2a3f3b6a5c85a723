//! Ring-buffer records to typed events. Records come from the kernel but are checked
//! like untrusted input: kind, probe and length must agree before a byte is read.

use std::fmt;

use aya::maps::{MapData, RingBuf};

use mmap_trace_common::{
    DriverMmapEvent, EventHeader, EventKind, ExecEvent, ExecImageEvent, ExitEvent, FILE_PATH_FULL,
    FILE_PATH_TRUNCATED, FILE_UNLINKED, FaultEvent, FileId, ForkEvent, MmChangeCause,
    MmChangeEvent, MmapEvent, MmapRegionEvent, PageCacheEvent, PageInsertEvent, Probe,
    RemapPfnEvent, RssEvent, SyscallEvent, USER_STACK_BYTES, UserStack, record_size, stack_offset,
};

/// The one drain policy, for every command: each record the ring buffer holds, in order,
/// goes to `each`; a record that does not decode is counted in `malformed` and warned
/// about — never fatal (the records after it are still good), never silent (trace and
/// verify-driver report the count, and verify fails on it: its proof lost an event).
pub fn drain(
    ring: &mut RingBuf<MapData>,
    malformed: &mut u64,
    mut each: impl FnMut(Event) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // Without --stacks no record carries a stack and no exec image comes.
    drain_records(ring, malformed, |record| match record {
        Record::Event(event, _) => each(event),
        Record::ExecImage(_) => Ok(()),
    })
}

/// [`drain`] with what `trace --stacks` adds: each event's user stack (borrowed from the
/// ring; copy what is kept) and the exec images.
pub fn drain_records(
    ring: &mut RingBuf<MapData>,
    malformed: &mut u64,
    mut each: impl FnMut(Record<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    while let Some(item) = ring.next() {
        match decode_record(&item) {
            Ok(record) => each(record)?,
            Err(e) => {
                *malformed += 1;
                log::warn!("skipping a malformed record from the kernel: {e}");
            }
        }
    }
    Ok(())
}

/// A ring-buffer record: an event (with its user stack under --stacks), or a side record.
#[expect(
    clippy::large_enum_variant,
    reason = "decoded by value per record on the hot path, as Event is; boxing would allocate per event"
)]
pub enum Record<'a> {
    Event(Event, Option<StackCopy<'a>>),
    /// `--stacks`: what exec mapped (follows the exec event).
    ExecImage(ExecImageEvent),
}

/// The user registers and stack bytes appended to a record under `--stacks`.
#[derive(Clone, Copy, Debug)]
pub struct StackCopy<'a> {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// arm64's link register (0 on x86-64).
    pub lr: u64,
    /// The copy of the stack from `sp` up (as far as the probe could read).
    pub bytes: &'a [u8],
}

/// The stack appended to a record of `kind`, if the record is long enough to hold one.
fn stack_copy(bytes: &[u8], kind: EventKind) -> Result<Option<StackCopy<'_>>, DecodeError> {
    let offset = stack_offset(kind);
    let Some(tail) = bytes.get(offset..) else {
        return Ok(None);
    };
    if tail.is_empty() {
        return Ok(None);
    }
    let fixed = size_of::<UserStack>() - USER_STACK_BYTES;
    let head: [u64; 5] = read(tail)?;
    let len = (head[4] as u32 as usize).min(USER_STACK_BYTES);
    let stack = &tail[fixed..];
    if stack.len() < len {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need: offset + fixed + len,
        });
    }
    Ok((head[0] != 0).then(|| StackCopy {
        ip: head[0],
        sp: head[1],
        bp: head[2],
        lr: head[3],
        bytes: &stack[..len],
    }))
}

/// [`decode`], with the stack appended to the record and the `--stacks` side records.
pub fn decode_record(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let header: EventHeader = read(bytes)?;
    if header.kind == EventKind::ExecImage as u32 {
        if header.probe != Probe::Exec as u32 {
            return Err(DecodeError::ProbeKindMismatch {
                kind: header.kind,
                probe: header.probe,
            });
        }
        return Ok(Record::ExecImage(read(bytes)?));
    }
    let event = decode(bytes)?;
    let stack = match EventKind::from_u32(header.kind) {
        Some(kind @ (EventKind::Syscall | EventKind::Mmap | EventKind::MmChange)) => {
            stack_copy(bytes, kind)?
        }
        _ => None,
    };
    Ok(Record::Event(event, stack))
}

/// [`drain`] into a vector.
pub fn drain_all(ring: &mut RingBuf<MapData>, malformed: &mut u64) -> Vec<Event> {
    let mut events = Vec::new();
    let _ = drain(ring, malformed, |e| {
        events.push(e);
        Ok(())
    });
    events
}

#[expect(
    clippy::large_enum_variant,
    reason = "records are Copy and decoded by value on the hot path; boxing would allocate per event"
)]
#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// munmap, mprotect, mremap, brk.
    Syscall(SyscallEvent),
    Mmap(MmapEvent),
    MmapRegion(MmapRegionEvent),
    RemapPfn(RemapPfnEvent),
    /// vm_insert_page and the rest of the page-insertion family.
    PageInsert(PageInsertEvent),
    DriverMmap(DriverMmapEvent),
    Exec(ExecEvent),
    PageCache(PageCacheEvent),
    Fork(ForkEvent),
    /// The catch-all: a traced process's mm was write-locked.
    MmChange(MmChangeEvent),
    /// A page fault on a user address (`--faults`).
    Fault(FaultEvent),
    /// A resident-set counter moved a step (`--faults`).
    Rss(RssEvent),
    /// The process ended: nothing of it follows.
    Exit(ExitEvent),
}

/// A change to which processes exist and whose address space they use: what a fork,
/// exec or exit record means to `space::lifecycle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Fork {
        parent: u32,
        child: u32,
        /// The child uses the parent's mm (vfork and kin).
        shares_mm: bool,
    },
    Exec {
        pid: u32,
    },
    Exit {
        pid: u32,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short { len: usize, need: usize },
    UnknownKind(u32),
    UnknownProbe(u32),
    ProbeKindMismatch { kind: u32, probe: u32 },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short { len, need } => write!(f, "record of {len} bytes, expected {need}"),
            Self::UnknownKind(k) => write!(f, "unknown record kind {k}"),
            Self::UnknownProbe(p) => write!(f, "unknown probe id {p}"),
            Self::ProbeKindMismatch { kind, probe } => {
                write!(f, "probe id {probe} cannot produce record kind {kind}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads a `T` from the front of `bytes` (any alignment) after checking the length.
fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: the length is checked; every T here is repr(C) plain data for which any
    // bit pattern is valid.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: EventHeader = read(bytes)?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let probe = Probe::from_u32(header.probe).ok_or(DecodeError::UnknownProbe(header.probe))?;
    let expected_kind = match probe {
        Probe::Mmap => EventKind::Mmap,
        p if p.is_syscall() => EventKind::Syscall,
        Probe::MmapRegion => EventKind::MmapRegion,
        Probe::RemapPfnRange => EventKind::RemapPfn,
        Probe::Exec => EventKind::Exec,
        Probe::PageCache => EventKind::PageCache,
        Probe::Fork => EventKind::Fork,
        Probe::MmLock => EventKind::MmChange,
        Probe::Fault => EventKind::Fault,
        Probe::Rss => EventKind::Rss,
        Probe::Exit => EventKind::Exit,
        p if p.is_page_insert() => EventKind::PageInsert,
        _ => EventKind::DriverMmap,
    };
    if kind != expected_kind {
        return Err(DecodeError::ProbeKindMismatch {
            kind: header.kind,
            probe: header.probe,
        });
    }
    let need = record_size(kind);
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    Ok(match kind {
        EventKind::Syscall => Event::Syscall(read(bytes)?),
        EventKind::Mmap => Event::Mmap(read(bytes)?),
        EventKind::MmapRegion => Event::MmapRegion(read(bytes)?),
        EventKind::RemapPfn => Event::RemapPfn(read(bytes)?),
        EventKind::PageInsert => Event::PageInsert(read(bytes)?),
        EventKind::DriverMmap => Event::DriverMmap(read(bytes)?),
        EventKind::Exec => Event::Exec(read(bytes)?),
        EventKind::PageCache => Event::PageCache(read(bytes)?),
        EventKind::Fork => Event::Fork(read(bytes)?),
        EventKind::MmChange => Event::MmChange(read(bytes)?),
        EventKind::ExecImage => {
            return Err(DecodeError::ProbeKindMismatch {
                kind: header.kind,
                probe: header.probe,
            });
        }
        EventKind::Fault => Event::Fault(read(bytes)?),
        EventKind::Rss => Event::Rss(read(bytes)?),
        EventKind::Exit => Event::Exit(read(bytes)?),
    })
}

impl Event {
    pub fn header(&self) -> &EventHeader {
        match self {
            Event::Syscall(e) => &e.header,
            Event::Mmap(e) => &e.call.header,
            Event::MmapRegion(e) => &e.header,
            Event::RemapPfn(e) => &e.header,
            Event::PageInsert(e) => &e.header,
            Event::DriverMmap(e) => &e.header,
            Event::Exec(e) => &e.header,
            Event::PageCache(e) => &e.header,
            Event::Fork(e) => &e.header,
            Event::MmChange(e) => &e.header,
            Event::Fault(e) => &e.header,
            Event::Rss(e) => &e.header,
            Event::Exit(e) => &e.header,
        }
    }

    /// The fork, exec or exit this event reports, for the per-process tables
    /// (`space::lifecycle`).
    pub fn lifecycle(&self) -> Option<Lifecycle> {
        let pid = self.header().pid;
        Some(match self {
            Event::Fork(f) => Lifecycle::Fork {
                parent: pid,
                child: f.child_pid,
                shares_mm: f.shares_mm != 0,
            },
            Event::Exec(_) => Lifecycle::Exec { pid },
            Event::Exit(_) => Lifecycle::Exit { pid },
            _ => return None,
        })
    }

    /// The call of a syscall probe's event (mmap's included).
    pub fn syscall(&self) -> Option<&SyscallEvent> {
        match self {
            Event::Syscall(e) => Some(e),
            Event::Mmap(e) => Some(&e.call),
            _ => None,
        }
    }

    /// The file an mmap's fd named, as the kernel saw it (None for other events and
    /// anonymous or failed mmaps).
    pub fn mmap_file(&self) -> Option<&FileId> {
        match self {
            Event::Mmap(e) if e.file.is_file() => Some(&e.file),
            _ => None,
        }
    }

    /// Valid by construction: `decode` checked it.
    pub fn probe(&self) -> Probe {
        Probe::from_u32(self.header().probe).unwrap_or(Probe::Mmap)
    }

    /// The completed x86-64 syscall this event reports: a probed call's, or one the
    /// catch-all saw return (None for other events, and for an ia32 call, whose number
    /// names another call).
    pub fn call(&self) -> Option<Call> {
        match self {
            Event::Syscall(_) | Event::Mmap(_) => {
                let e = self.syscall()?;
                Some(Call {
                    nr: self.probe().syscall_nr()?,
                    args: e.args,
                    ret: e.ret,
                })
            }
            Event::MmChange(c)
                if c.cause == MmChangeCause::Syscall as u32 && c.compat == 0 && c.nr >= 0 =>
            {
                Some(Call {
                    nr: c.nr as u64,
                    args: c.args,
                    ret: c.ret,
                })
            }
            _ => None,
        }
    }
}

/// A completed syscall: number, raw arguments, raw result (`-errno` on failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub nr: u64,
    pub args: [u64; 6],
    pub ret: i64,
}

/// Linux returns -4095..-1 for errors from address-returning calls.
pub fn is_error(ret: i64) -> bool {
    (-4095..0).contains(&ret)
}

/// The text before the first NUL of a fixed-size kernel string.
pub fn c_str(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
}

/// A mapped file's path as the probe walked it (mmap-trace-ebpf/src/path.rs). Bytes, as
/// the kernel has them: a file name may hold any byte but NUL and '/'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePath {
    /// Absolute; or, when `truncated`, the components nearest the file, joined (no
    /// leading '/': what came before them is unknown).
    pub bytes: Vec<u8>,
    /// The walk was cut (FILE_PATH_MAX_DEPTH steps or FILE_NAME_LEN bytes of names).
    pub truncated: bool,
    /// The file was unlinked, or never linked (memfd, shared /dev/zero), when mapped.
    pub deleted: bool,
}

impl FilePath {
    /// The path from the probe's record, if the probe walked it.
    pub fn from_kernel(file: &FileId) -> Option<Self> {
        let full = file.flags & FILE_PATH_FULL != 0;
        let truncated = file.flags & FILE_PATH_TRUNCATED != 0;
        if !file.is_file() || !(full || truncated) {
            return None;
        }
        let used = &file.name[..usize::from(file.name_len).min(file.name.len())];
        let mut bytes = Vec::with_capacity(used.len() + 1);
        // Leaf first, each component NUL-terminated: reversed here.
        for component in used.split(|&b| b == 0).filter(|c| !c.is_empty()).rev() {
            if full || !bytes.is_empty() {
                bytes.push(b'/');
            }
            bytes.extend_from_slice(component);
        }
        if bytes.is_empty() {
            bytes.push(b'/');
        }
        Some(Self {
            bytes,
            truncated: !full,
            deleted: file.flags & FILE_UNLINKED != 0,
        })
    }
}

/// A syscall record as the probe writes it (pid 7, tid 8, entry 1 ns, exit 9 ns), for
/// the tests of the decoder and of the JSON writer.
#[cfg(test)]
pub fn test_syscall_event(probe: Probe, comm: &[u8], args: [u64; 6], ret: i64) -> SyscallEvent {
    let mut c = [0u8; mmap_trace_common::TASK_COMM_LEN];
    c[..comm.len()].copy_from_slice(comm);
    SyscallEvent {
        header: EventHeader {
            kind: if probe == Probe::Mmap {
                EventKind::Mmap
            } else {
                EventKind::Syscall
            } as u32,
            probe: probe as u32,
            pid: 7,
            tid: 8,
            ts_ns: 9,
            comm: c,
            cgroup_id: 1,
        },
        enter_ts_ns: 1,
        lock_ts_ns: 0,
        args,
        ret,
    }
}

/// A fault record as the fault probe emits it (a write to a page not present).
#[cfg(test)]
pub fn test_fault_event(comm: &[u8]) -> FaultEvent {
    let mut c = [0u8; mmap_trace_common::TASK_COMM_LEN];
    c[..comm.len()].copy_from_slice(comm);
    FaultEvent {
        header: EventHeader {
            kind: EventKind::Fault as u32,
            probe: Probe::Fault as u32,
            pid: 7,
            tid: 8,
            ts_ns: 1_573_892_226_346,
            comm: c,
            cgroup_id: 1,
        },
        address: 0x7f00_0000_1234,
        ip: 0x5555_0000_1000,
        error_code: 0x6,
        in_kernel: 0,
        _pad: 0,
        maj_flt: 0,
    }
}

/// The event a syscall probe emits for `call`: mmap's carries `file` (None: all zero).
#[cfg(test)]
pub fn test_event(call: SyscallEvent, file: Option<FileId>) -> Event {
    if call.header.probe == Probe::Mmap as u32 {
        let none = FileId {
            dev: 0,
            flags: 0,
            name_len: 0,
            ino: 0,
            name: [0; mmap_trace_common::FILE_NAME_LEN],
        };
        Event::Mmap(MmapEvent {
            call,
            file: file.unwrap_or(none),
        })
    } else {
        Event::Syscall(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmap_trace_common::TASK_COMM_LEN;

    /// The bytes a syscall probe puts in the ring for `probe`.
    fn syscall_record(probe: Probe) -> Vec<u8> {
        fn bytes<T>(v: &T) -> Vec<u8> {
            // SAFETY: plain data viewed as bytes.
            unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
                .to_vec()
        }
        let call = test_syscall_event(probe, b"workload", [1, 2, 3, 4, 5, 6], -22);
        match test_event(call, None) {
            Event::Mmap(e) => bytes(&e),
            _ => bytes(&call),
        }
    }

    /// `--stacks`: the stack appended to a record (as long as its copy) is found at the
    /// record's end; a record cut inside its copy is malformed; none without a copy.
    #[test]
    fn decodes_the_appended_stack() {
        let mut record = syscall_record(Probe::Munmap);
        assert!(matches!(decode_record(&record), Ok(Record::Event(_, None))));
        let copy: Vec<u8> = (0..64u8).collect();
        for word in [0x40_1000u64, 0x7ffc_0000, 0x7ffc_0100, 0, copy.len() as u64] {
            record.extend_from_slice(&word.to_le_bytes());
        }
        record.extend_from_slice(&copy);
        let Ok(Record::Event(Event::Syscall(e), Some(stack))) = decode_record(&record) else {
            panic!("no stack decoded");
        };
        assert_eq!(e.ret, -22);
        assert_eq!(
            (stack.ip, stack.sp, stack.bp),
            (0x40_1000, 0x7ffc_0000, 0x7ffc_0100)
        );
        assert_eq!(stack.bytes, &copy[..]);
        record.truncate(record.len() - 1);
        assert!(matches!(
            decode_record(&record),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn decodes_a_syscall_record() {
        let Event::Syscall(e) = decode(&syscall_record(Probe::Munmap)).unwrap() else {
            panic!("wrong kind");
        };
        assert_eq!((e.header.pid, e.header.tid, e.ret), (7, 8, -22));
        assert_eq!(e.args, [1, 2, 3, 4, 5, 6]);
        assert_eq!(c_str(&e.header.comm), "workload");
        assert_eq!(TASK_COMM_LEN, e.header.comm.len());
        let Event::Mmap(e) = decode(&syscall_record(Probe::Mmap)).unwrap() else {
            panic!("mmap's record is an MmapEvent");
        };
        assert_eq!((e.call.args, e.file.ino), ([1, 2, 3, 4, 5, 6], 0));
    }

    /// A FileId as the path walk writes it: `names` leaf first.
    fn walked(flags: u16, names: &[&[u8]]) -> FileId {
        let mut f = FileId {
            dev: 1,
            flags,
            name_len: 0,
            ino: 2,
            name: [0; mmap_trace_common::FILE_NAME_LEN],
        };
        let mut off = 0;
        for n in names {
            f.name[off..off + n.len()].copy_from_slice(n);
            off += n.len() + 1;
        }
        f.name_len = off as u16;
        f
    }

    #[test]
    fn reassembles_walked_paths() {
        let path = |f: FileId| FilePath::from_kernel(&f).map(|p| (p.bytes, p.truncated, p.deleted));
        let full = walked(
            FILE_PATH_FULL,
            &[b"libc.so.6", b"x86_64-linux-gnu", b"lib", b"usr"],
        );
        assert_eq!(
            path(full),
            Some((
                b"/usr/lib/x86_64-linux-gnu/libc.so.6".to_vec(),
                false,
                false
            ))
        );
        let cut = walked(FILE_PATH_TRUNCATED, &[b"f", b"deep"]);
        assert_eq!(path(cut), Some((b"deep/f".to_vec(), true, false)));
        let memfd = walked(FILE_PATH_FULL | FILE_UNLINKED, &[b"memfd:x"]);
        assert_eq!(path(memfd), Some((b"/memfd:x".to_vec(), false, true)));
        let odd = walked(FILE_PATH_FULL, &[b"new\nline \xff", b"t\tmp"]);
        assert_eq!(path(odd).unwrap().0, b"/t\tmp/new\nline \xff".to_vec());
        // Leaf name only (a kprobe's record, or no BTF for the walk): no path.
        assert_eq!(path(walked(0, &[b"libc.so.6"])), None);
        // A length past the buffer is clamped, not trusted.
        let mut bad = walked(FILE_PATH_FULL, &[b"a"]);
        bad.name_len = u16::MAX;
        assert_eq!(path(bad).unwrap().0, b"/a".to_vec());
    }

    #[test]
    fn rejects_bad_records() {
        let good = syscall_record(Probe::Mmap);
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err(), "accepted {len} bytes");
        }
        let mut bad = good.clone();
        bad[0] = 99;
        assert_eq!(decode(&bad).unwrap_err(), DecodeError::UnknownKind(99));
        let mut bad = good.clone();
        bad[4] = Probe::RemapPfnRange as u8;
        assert!(matches!(
            decode(&bad),
            Err(DecodeError::ProbeKindMismatch { .. })
        ));
        let mut bad = good;
        bad[4] = 200;
        assert_eq!(decode(&bad).unwrap_err(), DecodeError::UnknownProbe(200));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every length up to 400 with pseudo-random content.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..400 {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                let _ = decode(&bytes);
            }
        }
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use mmap_trace_common::{EventKind, record_size};
    use proptest::prelude::*;

    proptest! {
        /// Any bytes at all: an event or an error, never a panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode(&bytes);
        }

        /// A plausible header (kind and probe near the real ids) on a record cut short,
        /// exact or padded: decoded only when the kind, probe and length agree.
        #[test]
        fn short_exact_and_oversized_records(
            kind in 0u32..8, probe in 0u32..16, len in 0usize..1024, fill in any::<u8>(),
        ) {
            let mut bytes = vec![fill; len];
            for (i, b) in kind.to_ne_bytes().into_iter().chain(probe.to_ne_bytes()).enumerate() {
                if i < len {
                    bytes[i] = b;
                }
            }
            if let Ok(event) = decode(&bytes) {
                let k = EventKind::from_u32(kind).expect("decoded an unknown kind");
                prop_assert!(len >= record_size(k));
                prop_assert_eq!(event.header().probe, probe);
            }
        }
    }
}
