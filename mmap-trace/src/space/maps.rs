//! The kernel's account of an address space, /proc/<pid>/maps, read as bytes and parsed
//! here: a file name is whatever bytes a process chose (not UTF-8, spaces, tabs, an
//! escaped newline, `[heap]`, ` (deleted)`), and procfs's parser fails on non-UTF-8 with
//! "Data incomplete". A line that does not parse is handed back as [`Unparsed`] for the
//! caller to report; it never stops the read.

use anyhow::{Context as _, Result};

use super::region::{Backing, Hidden, Name, Region, normalize};

/// A maps line that did not parse (what it said, and why not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unparsed {
    /// 1-based.
    pub line: usize,
    pub text: Name,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapsView {
    /// Normalized (sorted, continuing neighbours merged).
    pub regions: Vec<Region>,
    pub unparsed: Vec<Unparsed>,
}

/// /proc/<pid>/maps. An error only when the file cannot be read (the process is gone).
pub fn read(pid: u32) -> Result<MapsView> {
    let path = format!("/proc/{pid}/maps");
    let bytes = std::fs::read(&path)
        .with_context(|| format!("reading {path} (has process {pid} exited?)"))?;
    Ok(parse(&bytes))
}

/// Whether `/proc/<pid>` still reaches an address space. Its maps read empty, and its
/// status has no `Vm` lines, once the thread-group leader has left its mm: the whole
/// process exiting (a group exit kills the leader without a ptrace exit stop), or the
/// leader alone gone while other threads run on. A live mm with no VMA still shows
/// `VmSize: 0 kB`.
pub fn has_address_space(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .split(|&b| b == b'\n')
            .any(|line| line.starts_with(b"VmSize:"))
    })
}

pub fn parse(bytes: &[u8]) -> MapsView {
    let mut view = MapsView::default();
    let mut regions = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(r) => regions.push(r),
            Err(reason) => view.unparsed.push(Unparsed {
                line: i + 1,
                text: Name(line.to_vec()),
                reason,
            }),
        }
    }
    view.regions = normalize(regions);
    view
}

/// `start-end perms offset major:minor inode [padding name]`.
pub fn parse_line(line: &[u8]) -> Result<Region, &'static str> {
    let mut rest = line;
    let mut field = |what: &'static str| -> Result<&[u8], &'static str> {
        let end = rest.iter().position(|&b| b == b' ').ok_or(what)?;
        let f = &rest[..end];
        rest = &rest[end + 1..];
        Ok(f)
    };
    let range = field("no address range")?;
    let perms = field("no permissions")?;
    let offset = field("no offset")?;
    let dev = field("no device")?;
    // The inode is the last fixed field: an anonymous line ends right after it (with one
    // trailing space on today's kernels, none on older ones).
    let (inode, name) = match rest.iter().position(|&b| b == b' ') {
        Some(end) => (&rest[..end], trim_padding(&rest[end + 1..])),
        None => (rest, &[][..]),
    };
    let (start, end) = split2(range, b'-').ok_or("bad address range")?;
    let (start, end) = (
        hex(start).ok_or("bad start address")?,
        hex(end).ok_or("bad end address")?,
    );
    if start >= end {
        return Err("empty or inverted address range");
    }
    if perms.len() != 4 || !perms.is_ascii() {
        return Err("bad permissions");
    }
    let offset = hex(offset).ok_or("bad offset")?;
    let (major, minor) = split2(dev, b':').ok_or("bad device")?;
    let dev = (
        hex(major)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or("bad device major")?,
        hex(minor)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or("bad device minor")?,
    );
    let inode = std::str::from_utf8(inode)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("bad inode")?;
    Ok(region(
        start,
        end,
        String::from_utf8_lossy(perms).into_owned(),
        offset,
        dev,
        inode,
        name,
    ))
}

/// One VMA from the fields maps prints (a maps line, or a `PROCMAP_QUERY` answer), `name`
/// as maps prints it.
fn region(
    start: u64,
    end: u64,
    perms: String,
    offset: u64,
    dev: (u32, u32),
    inode: u64,
    name: &[u8],
) -> Region {
    let backing = backing(name, dev, inode);
    let hidden = Hidden {
        sysv_shm: matches!(&backing, Backing::File(n) if is_sysv_name(n.as_bytes())),
        grows_down: backing == Backing::Stack,
        ..Hidden::default()
    };
    Region {
        start,
        end,
        perms,
        offset,
        dev,
        inode,
        backing,
        overlay: false,
        hidden,
    }
}

/// `struct procmap_query` (include/uapi/linux/fs.h, Linux 6.11+).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: libc::c_ulong = (3 << 30)
    | ((std::mem::size_of::<ProcmapQuery>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 17;
const COVERING_OR_NEXT_VMA: u64 = 0x10;
const VMA_READABLE: u64 = 0x1;
const VMA_WRITABLE: u64 = 0x2;
const VMA_EXECUTABLE: u64 = 0x4;
const VMA_SHARED: u64 = 0x8;

/// The kernel's VMAs over a range, asked of an open /proc/<pid>/maps with `PROCMAP_QUERY`
/// (Linux 6.11+): one ioctl per VMA, no text, so reading what a call touched costs the
/// same whatever else is mapped (~0.6 µs a VMA on the 6.18 host; a whole maps read is
/// ~0.14 µs per VMA of the process). The open file is bound to the address space it was
/// opened on: open it again after an exec.
pub struct MapsQuery {
    maps: std::fs::File,
    name: Vec<u8>,
}

impl MapsQuery {
    /// `None` when the kernel has no `PROCMAP_QUERY` (before 6.11): read maps whole then.
    pub fn open(pid: u32) -> Result<Option<Self>> {
        let path = format!("/proc/{pid}/maps");
        let maps = std::fs::File::open(&path)
            .with_context(|| format!("opening {path} (has process {pid} exited?)"))?;
        let mut query = Self {
            maps,
            name: vec![0; 4096],
        };
        match query.next_vma(0) {
            Ok(_) => Ok(Some(query)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("PROCMAP_QUERY on {path}")),
        }
    }

    /// The VMAs over `[start, end)`, whole (not cut at the range's edges), in order.
    pub fn regions(&mut self, start: u64, end: u64) -> Result<Vec<Region>> {
        let mut out = Vec::new();
        let mut addr = start;
        while addr < end {
            let Some(r) = self.next_vma(addr).context("PROCMAP_QUERY")? else {
                break;
            };
            if r.start >= end {
                break;
            }
            addr = r.end;
            out.push(r);
        }
        Ok(out)
    }

    /// The VMA holding `addr`, or the first after it (`None`: nothing from there on).
    fn next_vma(&mut self, addr: u64) -> std::io::Result<Option<Region>> {
        use std::os::fd::AsRawFd as _;
        let mut q = ProcmapQuery {
            size: std::mem::size_of::<ProcmapQuery>() as u64,
            query_flags: COVERING_OR_NEXT_VMA,
            query_addr: addr,
            vma_name_size: self.name.len() as u32,
            vma_name_addr: self.name.as_mut_ptr() as u64,
            ..ProcmapQuery::default()
        };
        // SAFETY: the ioctl reads and writes `q` (its size given) and writes at most
        // `vma_name_size` bytes at `vma_name_addr`, our buffer.
        let rc = unsafe { libc::ioctl(self.maps.as_raw_fd(), PROCMAP_QUERY as _, &mut q) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(e),
            };
        }
        let name_len = (q.vma_name_size as usize)
            .saturating_sub(1)
            .min(self.name.len());
        let raw = &self.name[..name_len];
        let dev = (q.dev_major, q.dev_minor);
        // maps prints a file's path through mangle_path, which escapes a newline as
        // `\012`; the names the kernel makes up (`[heap]`, `[anon_shmem:…]`) as they are.
        let is_path = (dev != (0, 0) || q.inode != 0) && raw.first() == Some(&b'/');
        let name = if is_path && raw.contains(&b'\n') {
            raw.iter()
                .flat_map(|&b| match b {
                    b'\n' => b"\\012".to_vec(),
                    b => vec![b],
                })
                .collect()
        } else {
            raw.to_vec()
        };
        let flag = |bit: u64, c: char| if q.vma_flags & bit != 0 { c } else { '-' };
        let perms: String = [
            flag(VMA_READABLE, 'r'),
            flag(VMA_WRITABLE, 'w'),
            flag(VMA_EXECUTABLE, 'x'),
            if q.vma_flags & VMA_SHARED != 0 {
                's'
            } else {
                'p'
            },
        ]
        .iter()
        .collect();
        Ok(Some(region(
            q.vma_start,
            q.vma_end,
            perms,
            q.vma_offset,
            dev,
            q.inode,
            &name,
        )))
    }
}

/// A file has a device or inode or an absolute path (a SysV segment with shmid 0 has
/// inode 0); anything else is the kernel's own name: `[heap]` is the heap only when no
/// file is behind it (a file named `[heap]` has a path and an inode).
fn backing(name: &[u8], dev: (u32, u32), inode: u64) -> Backing {
    if name.first() == Some(&b'/') || dev != (0, 0) || inode != 0 {
        return Backing::File(Name(name.to_vec()));
    }
    match name {
        b"" => Backing::Anonymous,
        b"[heap]" => Backing::Heap,
        b"[stack]" => Backing::Stack,
        _ => Backing::Special(Name(name.to_vec())),
    }
}

/// `/SYSV%08x (deleted)` (ipc/shm.c names the segment's file `SYSV%08x`).
pub fn is_sysv_name(name: &[u8]) -> bool {
    name.len() == 23
        && name.starts_with(b"/SYSV")
        && name.ends_with(b" (deleted)")
        && name[5..13].iter().all(u8::is_ascii_hexdigit)
}

/// The kernel pads the name to a column with spaces; a name itself never starts with one
/// (paths are absolute, kernel names start with `[`).
fn trim_padding(s: &[u8]) -> &[u8] {
    let first = s.iter().position(|&b| b != b' ').unwrap_or(s.len());
    &s[first..]
}

fn split2(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live process reaches its address space through /proc; a zombie (exited, not
    /// yet reaped) does not, and its maps read empty.
    #[test]
    fn an_exited_process_has_no_address_space() {
        assert!(has_address_space(std::process::id()));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawning true");
        let pid = child.id();
        let zombie = (0..2000).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if state == Some('Z') {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            false
        });
        assert!(zombie, "`true` did not exit within 10 s");
        assert!(!has_address_space(pid));
        assert!(read(pid).unwrap().regions.is_empty());
        child.wait().expect("reaping true");
    }

    #[test]
    fn reads_our_own_maps() {
        let view = read(std::process::id()).unwrap();
        assert!(view.unparsed.is_empty(), "{:?}", view.unparsed);
        assert!(view.regions.iter().any(|r| r.backing == Backing::Stack));
        assert!(
            view.regions
                .iter()
                .any(|r| matches!(&r.backing, Backing::File(n) if n.as_bytes().starts_with(b"/")))
        );
        assert!(view.regions.windows(2).all(|w| w[0].end <= w[1].start));
    }

    /// Where the kernel has PROCMAP_QUERY, it answers exactly what maps shows.
    #[test]
    fn queries_answer_what_maps_shows() {
        let pid = std::process::id();
        let Some(mut query) = MapsQuery::open(pid).unwrap() else {
            return; // before 6.11
        };
        // The same snapshot twice: nothing else maps between the reads of this test
        // thread, but other test threads may; retry a few times for a quiet moment.
        for _ in 0..20 {
            let maps = read(pid).unwrap().regions;
            let queried = normalize(query.regions(0, u64::MAX).unwrap());
            let maps: Vec<Region> = maps
                .into_iter()
                .filter(|r| r.backing != Backing::Special(Name(b"[vsyscall]".to_vec())))
                .collect();
            if maps == queried {
                return;
            }
        }
        panic!("PROCMAP_QUERY never agreed with maps");
    }

    #[test]
    fn parses_every_kind_of_line() {
        let text = b"55d0c0a00000-55d0c0a02000 r--p 00001000 fe:00 247030                     /usr/bin/cat\n\
7f00-8f00 rw-p 00000000 00:00 0 \n\
9000-a000 rw-p 00000000 00:00 0\n\
a000-b000 rw-p 00000000 00:00 0                          [heap]\n\
b000-c000 rw-p 00000000 fe:00 12                         /tmp/x/[heap]\n\
c000-d000 rw-s 00000000 00:01 0                          /SYSV00000000 (deleted)\n\
d000-e000 r--p 00000000 fe:00 13                         /tmp/a b\tc (deleted)\n\
e000-f000 r--p 00000000 fe:00 14                         /tmp/\xff\xfe-bin\n\
f000-10000 r--p 00000000 fe:00 15                        /tmp/new\\012line\n\
10000-11000 r-xp 00000000 00:00 0                        [vdso]\n\
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]\n";
        let view = parse(text);
        assert!(view.unparsed.is_empty(), "{:?}", view.unparsed);
        let b: Vec<String> = view.regions.iter().map(|r| r.backing.to_string()).collect();
        assert_eq!(
            b,
            [
                "",
                "",
                "[heap]",
                "/tmp/x/[heap]",
                "/SYSV00000000 (deleted)",
                "/tmp/a b\tc (deleted)",
                "/tmp/\\xff\\xfe-bin",
                "/tmp/new\\012line",
                "[vdso]",
                "/usr/bin/cat",
                "[vsyscall]"
            ]
        );
        // Two anonymous lines, with and without a trailing space.
        assert_eq!(
            (view.regions[0].start, view.regions[1].end),
            (0x7f00, 0xa000)
        );
        assert!(matches!(view.regions[2].backing, Backing::Heap));
        assert!(view.regions[4].hidden.sysv_shm);
        assert_eq!(view.regions[9].offset, 0x1000);
        assert_eq!(view.regions[9].dev, (0xfe, 0));
    }

    #[test]
    fn a_bad_line_is_reported_and_the_rest_still_parse() {
        let view = parse(b"zz-10 rw-p 0 00:00 0\n1000-2000 rw-p 00000000 00:00 0 \n2000-1000 rw-p 0 0:0 0\ngarbage\n");
        assert_eq!(view.regions.len(), 1);
        let why: Vec<(usize, &str)> = view.unparsed.iter().map(|u| (u.line, u.reason)).collect();
        assert_eq!(
            why,
            [
                (1, "bad start address"),
                (3, "empty or inverted address range"),
                (4, "no address range")
            ]
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes at all, from a hostile or truncated maps file: never a panic; every
        /// line is either a region or an unparsed line.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let view = parse(&bytes);
            prop_assert!(view.regions.iter().all(|r| r.end > r.start));
        }

        #[test]
        fn near_valid_lines_never_panic(
            start in any::<u64>(), end in any::<u64>(), off in any::<u64>(), ino in any::<u64>(),
            name in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut line = format!("{start:x}-{end:x} rw-s {off:08x} 00:01 {ino}      ").into_bytes();
            line.extend(name.iter().filter(|&&b| b != b'\n'));
            let view = parse(&line);
            prop_assert_eq!(view.regions.len() + view.unparsed.len(), 1);
        }
    }
}
