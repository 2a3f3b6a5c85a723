//! One line of /proc/<pid>/maps as a value: the unit both the model and the kernel's
//! view are kept and compared in.

use std::fmt;

/// The page size (x86-64), one definition for every crate (the driver's ABI).
pub use mmtrace_driver_abi::PAGE;

/// What maps shows for MAP_SHARED|MAP_ANONYMOUS memory and MAP_SHARED of /dev/zero: a
/// shmem file whose inode the events do not carry (compared without it).
pub const SHARED_ANON_PATH: &[u8] = b"/dev/zero (deleted)";

pub fn page_up(v: u64) -> u64 {
    v.saturating_add(PAGE - 1) & !(PAGE - 1)
}

pub fn page_down(v: u64) -> u64 {
    v & !(PAGE - 1)
}

/// A name as the kernel prints it in maps: bytes (not necessarily UTF-8), with a newline
/// already escaped as `\012` (fs/proc/task_mmu.c: `seq_file_path(m, file, "\n")`).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Name(pub Vec<u8>);

impl Name {
    /// A path as the file system has it (readlink of /proc/<pid>/fd/N, a JSON path): the
    /// kernel escapes only `\n` in maps (mangle_path with the "\n" set).
    pub fn from_path(raw: &[u8]) -> Self {
        let mut out = Vec::with_capacity(raw.len());
        for &b in raw {
            if b == b'\n' {
                out.extend_from_slice(b"\\012");
            } else {
                out.push(b);
            }
        }
        Name(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(s.as_bytes().to_vec())
    }
}

/// UTF-8 as it is; any other byte as `\xNN`: printable, lossless, never a panic.
impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// What backs a region, as the maps path column says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    Anonymous,
    Heap,
    Stack,
    /// A mapped file (anything with a `struct file`: shmem, SysV segments, /dev/zero
    /// shared, devices…), named as maps names it.
    File(Name),
    /// `[vdso]`, `[vvar]`, `[anon:NAME]`… : kernel-made, compared as they are.
    Special(Name),
}

/// VMA flags maps does not print but the model needs (fork, shmdt, stack growth).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hidden {
    /// MADV_DONTFORK (VM_DONTCOPY): not inherited by a fork child.
    pub dont_fork: bool,
    /// MADV_WIPEONFORK: inherited, emptied (maps the same).
    pub wipe_on_fork: bool,
    /// MAP_GROWSDOWN (VM_GROWSDOWN): a fault below may extend it downwards.
    pub grows_down: bool,
    /// A SysV shared memory attach (shm_vm_ops): what shmdt removes.
    pub sysv_shm: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// `rwxp` / `rw-s`, as in maps.
    pub perms: String,
    /// Bytes into the file (0 for anonymous memory).
    pub offset: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    pub backing: Backing,
    /// A file on overlayfs, as the events imply it: the fd names the overlay's file, but
    /// maps shows the backing (layer) file's device and inode on some kernels (6.1) and
    /// the overlay's on others (6.18), so those two are not compared for it.
    pub overlay: bool,
    /// Not in maps: known from the events (a region read from maps has the defaults,
    /// except `sysv_shm` and `grows_down` of `[stack]`, which its name shows).
    pub hidden: Hidden,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} {:08x} {:02x}:{:02x} {} {}",
            self.start,
            self.end,
            self.perms,
            self.offset,
            self.dev.0,
            self.dev.1,
            self.inode,
            self.backing
        )
    }
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::Anonymous => Ok(()),
            Backing::Heap => f.write_str("[heap]"),
            Backing::Stack => f.write_str("[stack]"),
            Backing::File(p) | Backing::Special(p) => p.fmt(f),
        }
    }
}

impl Region {
    pub fn anonymous(start: u64, end: u64, perms: &str) -> Self {
        Region {
            start,
            end,
            perms: perms.into(),
            offset: 0,
            dev: (0, 0),
            inode: 0,
            backing: Backing::Anonymous,
            overlay: false,
            hidden: Hidden::default(),
        }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn shared(&self) -> bool {
        self.perms.ends_with('s')
    }

    /// Whether the offset column means something: a region with a file (maps prints
    /// vm_pgoff only then); anonymous memory shows 0 wherever it is cut.
    pub fn has_file(&self) -> bool {
        matches!(self.backing, Backing::File(_))
    }

    /// Shared anonymous memory (a shmem file whose inode the events do not give).
    pub fn shared_anon(&self) -> bool {
        matches!(&self.backing, Backing::File(p) if p.as_bytes() == SHARED_ANON_PATH)
    }

    /// The file's (device, inode) can be compared: not overlay (the layer's may show),
    /// not shared anonymous memory (the inode is the kernel's own).
    pub fn identity_known(&self) -> bool {
        self.has_file() && !self.overlay && !self.shared_anon()
    }

    /// The piece `[at, end)` of this region (its offset continues for a file).
    pub fn upper_part(&self, at: u64) -> Region {
        let mut upper = self.clone();
        upper.start = at;
        if self.has_file() {
            upper.offset = self.offset.wrapping_add(at - self.start);
        }
        upper
    }

    /// Same attributes, and (for files) the offset continues: the kernel may keep these
    /// as one VMA or two; the comparison must not care.
    pub fn continues(&self, next: &Region) -> bool {
        self.end == next.start
            && self.perms == next.perms
            && self.dev == next.dev
            && self.inode == next.inode
            && self.backing == next.backing
            && self.overlay == next.overlay
            && self.hidden == next.hidden
            && (!self.has_file() || next.offset == self.offset.wrapping_add(self.len()))
    }
}

/// Sorted, with neighbours that continue each other merged.
pub fn normalize(mut regions: Vec<Region>) -> Vec<Region> {
    regions.sort_by_key(|r| r.start);
    let mut out: Vec<Region> = Vec::with_capacity(regions.len());
    for r in regions.into_iter().filter(|r| r.end > r.start) {
        match out.last_mut() {
            Some(last) if last.continues(&r) => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// `rwxp` from PROT_* bits: the maps column of the vm_flags mmap(2) gives them (one
/// formatter, the driver ABI crate's).
pub fn perms(prot: u64, shared: bool) -> String {
    use mmtrace_driver_abi::vm;
    vm::perms(vm::from_prot(prot, shared))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn anon(start: u64, end: u64, perms: &str) -> Region {
        Region::anonymous(start, end, perms)
    }

    #[test]
    fn merges_only_continuing_neighbours() {
        let file = |start, end, offset| Region {
            offset,
            dev: (8, 1),
            inode: 42,
            backing: Backing::File("/lib/x.so".into()),
            ..anon(start, end, "r--p")
        };
        let merged = normalize(vec![
            anon(0x3000, 0x4000, "rw-p"),
            anon(0x1000, 0x3000, "rw-p"),
            anon(0x4000, 0x5000, "r--p"),
            file(0x5000, 0x6000, 0),
            file(0x6000, 0x7000, 0x1000),
            file(0x7000, 0x8000, 0x5000),
        ]);
        let spans: Vec<(u64, u64)> = merged.iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(
            spans,
            [
                (0x1000, 0x4000),
                (0x4000, 0x5000),
                (0x5000, 0x7000),
                (0x7000, 0x8000)
            ]
        );
    }

    #[test]
    fn names_print_every_byte_and_escape_newlines_like_the_kernel() {
        assert_eq!(
            Name(b"/t/\xff\xfe-bin".to_vec()).to_string(),
            "/t/\\xff\\xfe-bin"
        );
        assert_eq!(
            Name::from_path(b"/t/new\nline").as_bytes(),
            b"/t/new\\012line"
        );
        assert_eq!(Name::from("/t/a b\tc").to_string(), "/t/a b\tc");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn region() -> impl Strategy<Value = Region> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            0u64..3,
            prop::bool::ANY,
        )
            .prop_map(|(start, end, offset, inode, file)| Region {
                offset,
                inode,
                backing: if file {
                    Backing::File("/f".into())
                } else {
                    Backing::Anonymous
                },
                ..Region::anonymous(start, end, "rw-p")
            })
    }

    proptest! {
        /// Any regions, even nonsense ones from a hostile maps file: sorted, non-empty,
        /// never a panic (overflowing offsets included).
        #[test]
        fn normalize_never_panics(regions in proptest::collection::vec(region(), 0..12)) {
            let out = normalize(regions);
            prop_assert!(out.iter().all(|r| r.end > r.start));
            prop_assert!(out.windows(2).all(|w| w[0].start <= w[1].start));
        }
    }
}
