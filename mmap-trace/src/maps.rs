//! The kernel's account of an address space, /proc/<pid>/maps (parsed by procfs), as
//! `Region`s: the unit both the shadow and the kernel's view are compared in.

use std::fmt;

use anyhow::{Context as _, Result};
use procfs::process::{MMPermissions, MMapPath, Process};

/// What backs a region, as the maps path column says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    Anonymous,
    Heap,
    Stack,
    File(String),
    /// `[vdso]`, `[vvar]`, a thread stack… : kernel-made, compared as they are.
    Special(String),
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
            Backing::File(p) | Backing::Special(p) => f.write_str(p),
        }
    }
}

impl Region {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Same attributes, and (for files) the offset continues: the kernel may keep these
    /// as one VMA or two; the comparison must not care.
    fn continues(&self, next: &Region) -> bool {
        self.end == next.start
            && self.perms == next.perms
            && self.dev == next.dev
            && self.inode == next.inode
            && self.backing == next.backing
            && (self.inode == 0 || next.offset == self.offset + self.len())
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

pub fn perms_string(p: MMPermissions) -> String {
    let bit = |flag, c| if p.contains(flag) { c } else { '-' };
    format!(
        "{}{}{}{}",
        bit(MMPermissions::READ, 'r'),
        bit(MMPermissions::WRITE, 'w'),
        bit(MMPermissions::EXECUTE, 'x'),
        if p.contains(MMPermissions::SHARED) { 's' } else { 'p' }
    )
}

/// /proc/<pid>/maps, normalized.
pub fn read(pid: u32) -> Result<Vec<Region>> {
    let process = Process::new(pid as i32).with_context(|| format!("no process with pid {pid}"))?;
    let maps = process.maps().with_context(|| format!("reading /proc/{pid}/maps"))?;
    let regions = maps
        .into_iter()
        .map(|m| Region {
            start: m.address.0,
            end: m.address.1,
            perms: perms_string(m.perms),
            offset: m.offset,
            dev: (m.dev.0 as u32, m.dev.1 as u32),
            inode: m.inode,
            backing: match m.pathname {
                MMapPath::Path(p) => Backing::File(p.display().to_string()),
                MMapPath::Heap => Backing::Heap,
                MMapPath::Stack => Backing::Stack,
                MMapPath::Anonymous => Backing::Anonymous,
                MMapPath::Vdso => Backing::Special("[vdso]".into()),
                MMapPath::Vvar => Backing::Special("[vvar]".into()),
                MMapPath::Vsyscall => Backing::Special("[vsyscall]".into()),
                MMapPath::TStack(tid) => Backing::Special(format!("[stack:{tid}]")),
                MMapPath::Vsys(key) => Backing::Special(format!("SYSV{key:08x}")),
                MMapPath::Rollup => Backing::Special("[rollup]".into()),
                MMapPath::Other(s) => Backing::Special(s),
            },
            overlay: false,
        })
        .collect();
    Ok(normalize(regions))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn anon(start: u64, end: u64, perms: &str) -> Region {
        Region {
            start,
            end,
            perms: perms.into(),
            offset: 0,
            dev: (0, 0),
            inode: 0,
            backing: Backing::Anonymous,
            overlay: false,
        }
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
        assert_eq!(spans, [(0x1000, 0x4000), (0x4000, 0x5000), (0x5000, 0x7000), (0x7000, 0x8000)]);
    }

    #[test]
    fn reads_our_own_maps() {
        let regions = read(std::process::id()).unwrap();
        assert!(regions.iter().any(|r| r.backing == Backing::Stack));
        assert!(regions.windows(2).all(|w| w[0].end <= w[1].start));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn region() -> impl Strategy<Value = Region> {
        (any::<u64>(), any::<u64>(), any::<u64>(), 0u64..3, prop::bool::ANY).prop_map(
            |(start, end, offset, inode, file)| Region {
                start,
                end,
                perms: "rw-p".into(),
                offset,
                dev: (0, 0),
                inode,
                backing: if file { Backing::File("/f".into()) } else { Backing::Anonymous },
                overlay: false,
            },
        )
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
