//! The shadow address space: what a process's maps must look like if the traced events
//! are the whole story. Built from events only (seeded from /proc/<pid>/maps at attach or
//! exec) and compared against the kernel's account by `compare`.

use crate::maps::{Backing, Region, normalize};

pub const PAGE: u64 = 4096;
/// What maps shows for MAP_SHARED|MAP_ANONYMOUS memory (a shmem file whose inode the
/// events do not carry: compared without its inode).
pub const SHARED_ANON_PATH: &str = "/dev/zero (deleted)";

const VM_SHARED: u64 = 0x8;
const VM_MAYWRITE: u64 = 0x20;

/// The file behind an fd at the moment of the mmap (the process is stopped there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: (u32, u32),
    pub inode: u64,
    pub path: String,
    /// On overlayfs (see `Region::overlay`).
    pub overlay: bool,
}

#[derive(Clone, Default, Debug)]
pub struct ShadowSpace {
    regions: Vec<Region>,
    start_brk: u64,
    /// vm_start → first PFN of a remap_pfn_range on a copy-on-write mapping: the kernel
    /// rewrites vm_pgoff to that PFN, so maps shows PFN × page size as the offset.
    cow_remaps: Vec<(u64, u64)>,
}

pub fn page_align(v: u64) -> u64 {
    v.saturating_add(PAGE - 1) & !(PAGE - 1)
}

fn perms(prot: u64, shared: bool) -> String {
    let bit = |b: u64, c| if prot & b != 0 { c } else { '-' };
    format!(
        "{}{}{}{}",
        bit(libc::PROT_READ as u64, 'r'),
        bit(libc::PROT_WRITE as u64, 'w'),
        bit(libc::PROT_EXEC as u64, 'x'),
        if shared { 's' } else { 'p' }
    )
}

impl ShadowSpace {
    pub fn seed(regions: Vec<Region>, start_brk: u64) -> Self {
        Self { regions: normalize(regions), start_brk, cow_remaps: Vec::new() }
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The child's address space at fork.
    pub fn fork_child(&self) -> Self {
        self.clone()
    }

    /// Splits the region containing `addr` (strictly inside) in two.
    fn split_at(&mut self, addr: u64) {
        let Some(i) = self.regions.iter().position(|r| r.start < addr && addr < r.end) else {
            return;
        };
        let mut upper = self.regions[i].clone();
        upper.start = addr;
        if upper.inode != 0 {
            upper.offset += addr - self.regions[i].start;
        }
        self.regions[i].end = addr;
        self.regions.insert(i + 1, upper);
    }

    fn remove_range(&mut self, start: u64, end: u64) {
        self.split_at(start);
        self.split_at(end);
        self.regions.retain(|r| r.end <= start || r.start >= end);
    }

    fn update_range(&mut self, start: u64, end: u64, f: impl Fn(&mut Region)) {
        self.split_at(start);
        self.split_at(end);
        self.regions.iter_mut().filter(|r| r.start >= start && r.end <= end).for_each(f);
        self.regions = normalize(std::mem::take(&mut self.regions));
    }

    fn insert(&mut self, region: Region) {
        self.remove_range(region.start, region.end);
        self.regions.push(region);
        self.regions = normalize(std::mem::take(&mut self.regions));
    }

    /// A successful mmap at `addr` (the call's result).
    pub fn mmap(&mut self, addr: u64, len: u64, prot: u64, flags: u64, offset: u64, file: Option<FileIdentity>) {
        let shared = flags & libc::MAP_TYPE as u64 != libc::MAP_PRIVATE as u64;
        let end = addr + page_align(len);
        let mut region = Region {
            start: addr,
            end,
            perms: perms(prot, shared),
            offset: 0,
            dev: (0, 0),
            inode: 0,
            backing: Backing::Anonymous,
            overlay: false,
        };
        match file {
            Some(f) if flags & libc::MAP_ANONYMOUS as u64 == 0 => {
                region.offset = offset;
                region.dev = f.dev;
                region.inode = f.inode;
                region.backing = Backing::File(f.path);
                region.overlay = f.overlay;
            }
            _ if shared => {
                region.dev = (0, 1);
                region.backing = Backing::File(SHARED_ANON_PATH.into());
            }
            _ => {}
        }
        if let Some(i) = self.cow_remaps.iter().position(|&(start, _)| start == addr) {
            region.offset = self.cow_remaps.swap_remove(i).1 * PAGE;
        }
        self.insert(region);
    }

    pub fn munmap(&mut self, addr: u64, len: u64) {
        self.remove_range(addr, addr + page_align(len));
    }

    pub fn mprotect(&mut self, addr: u64, len: u64, prot: u64) {
        self.update_range(addr, addr + page_align(len), |r| {
            r.perms = perms(prot, r.perms.ends_with('s'));
        });
    }

    /// A successful mremap of [old, old+old_len) to `new` (the call's result).
    pub fn mremap(&mut self, old: u64, old_len: u64, new_len: u64, flags: u64, new: u64) {
        let (old_len, new_len) = (page_align(old_len), page_align(new_len));
        self.split_at(old);
        self.split_at(old + old_len);
        let moved: Vec<Region> = self
            .regions
            .iter()
            .filter(|r| r.start >= old && r.end <= old + old_len)
            .cloned()
            .collect();
        let Some(last) = moved.last().cloned() else { return };
        // MREMAP_DONTUNMAP leaves the old range mapped.
        if flags & 4 == 0 {
            self.remove_range(old, old + old_len);
        }
        let shift = |a: u64| a - old + new;
        let new_end = new + new_len;
        self.remove_range(new, new_end);
        for mut r in moved {
            r.start = shift(r.start);
            r.end = shift(r.end).min(new_end);
            if r.start < r.end {
                self.regions.push(r);
            }
        }
        if new_len > old_len {
            // Growth continues the last piece's mapping.
            let mut grown = last;
            if grown.inode != 0 {
                grown.offset += grown.len();
            }
            grown.start = new + old_len;
            grown.end = new_end;
            self.regions.push(grown);
        }
        self.regions = normalize(std::mem::take(&mut self.regions));
    }

    /// brk moved the break to `ret` (brk(2) returns the break, whether it moved or not).
    pub fn brk(&mut self, ret: u64) {
        if self.start_brk == 0 || ret < self.start_brk {
            return;
        }
        let old_end = self
            .regions
            .iter()
            .find(|r| r.backing == Backing::Heap)
            .map_or(self.start_brk, |r| r.end);
        self.remove_range(self.start_brk, old_end.max(self.start_brk));
        let end = page_align(ret);
        if end > self.start_brk {
            self.insert(Region {
                start: self.start_brk,
                end,
                perms: "rw-p".into(),
                offset: 0,
                dev: (0, 0),
                inode: 0,
                backing: Backing::Heap,
                overlay: false,
            });
        }
    }

    /// A remap_pfn_range inside an mmap that is still under way (its syscall event comes
    /// after this one).
    pub fn remap_pfn_range(&mut self, vm_start: u64, vm_flags: u64, pfn: u64) {
        if vm_flags & (VM_SHARED | VM_MAYWRITE) == VM_MAYWRITE {
            self.cow_remaps.push((vm_start, pfn));
        }
    }
}

/// One way the kernel's account differs from the shadow over [start, end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub start: u64,
    pub end: u64,
    /// `mapping`, `perms`, `offset`, `device`, `inode` or `path`.
    pub field: &'static str,
    /// The shadow's value (what the events imply).
    pub expected: String,
    /// The kernel's value (/proc/<pid>/maps).
    pub found: String,
}

/// Walks both accounts over every boundary either has, so a difference is reported for
/// exactly the addresses it covers, whatever VMA boundaries either side drew.
pub fn compare(shadow: &[Region], kernel: &[Region]) -> Vec<Difference> {
    let mut bounds: Vec<u64> = shadow.iter().chain(kernel).flat_map(|r| [r.start, r.end]).collect();
    bounds.sort_unstable();
    bounds.dedup();
    let covering = |regions: &[Region], a: u64| regions.iter().find(|r| r.start <= a && a < r.end).cloned();
    let mut out: Vec<Difference> = Vec::new();
    for w in bounds.windows(2) {
        let (start, end) = (w[0], w[1]);
        let diffs = match (covering(shadow, start), covering(kernel, start)) {
            (None, None) => vec![],
            // The main stack grows on page faults, not through syscalls.
            (None, Some(k)) if k.backing == Backing::Stack => vec![],
            (None, Some(k)) => vec![("mapping", "unmapped".to_string(), k.to_string())],
            (Some(s), None) => vec![("mapping", s.to_string(), "unmapped".to_string())],
            (Some(s), Some(k)) => fields(&s, &k, start),
        };
        for (field, expected, found) in diffs {
            match out.last_mut() {
                Some(d) if d.end == start && d.field == field && d.expected == expected && d.found == found => {
                    d.end = end
                }
                _ => out.push(Difference { start, end, field, expected, found }),
            }
        }
    }
    out
}

fn fields(s: &Region, k: &Region, at: u64) -> Vec<(&'static str, String, String)> {
    let mut d = Vec::new();
    if s.perms != k.perms {
        d.push(("perms", s.perms.clone(), k.perms.clone()));
    }
    if k.backing == Backing::Stack && s.backing == Backing::Stack {
        return d;
    }
    if s.backing != k.backing {
        d.push(("path", s.backing.to_string(), k.backing.to_string()));
        return d;
    }
    let offset_at = |r: &Region| if r.inode == 0 && r.offset == 0 { 0 } else { r.offset + (at - r.start) };
    let shared_anon = matches!(&s.backing, Backing::File(p) if p == SHARED_ANON_PATH);
    if offset_at(s) != offset_at(k) && !shared_anon {
        d.push(("offset", format!("{:#x}", offset_at(s)), format!("{:#x}", offset_at(k))));
    }
    if s.dev != k.dev && !shared_anon && !s.overlay {
        d.push(("device", format!("{:02x}:{:02x}", s.dev.0, s.dev.1), format!("{:02x}:{:02x}", k.dev.0, k.dev.1)));
    }
    if s.inode != k.inode && !shared_anon && !s.overlay {
        d.push(("inode", s.inode.to_string(), k.inode.to_string()));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::tests::anon;

    const RW: u64 = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    const ANON: u64 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;

    fn spans(s: &ShadowSpace) -> Vec<(u64, u64, String)> {
        s.regions().iter().map(|r| (r.start, r.end, r.perms.clone())).collect()
    }

    #[test]
    fn mprotect_splits_a_mapping_in_three() {
        let mut s = ShadowSpace::default();
        s.mmap(0x10000, 3 * PAGE, RW, ANON, 0, None);
        s.mprotect(0x11000, PAGE, libc::PROT_READ as u64);
        assert_eq!(
            spans(&s),
            [(0x10000, 0x11000, "rw-p".into()), (0x11000, 0x12000, "r--p".into()), (0x12000, 0x13000, "rw-p".into())]
        );
        s.mprotect(0x11000, PAGE, RW);
        assert_eq!(spans(&s), [(0x10000, 0x13000, "rw-p".into())], "merged back");
    }

    #[test]
    fn munmap_of_a_middle_page_and_map_fixed_over_it() {
        let mut s = ShadowSpace::default();
        s.mmap(0x10000, 3 * PAGE, RW, ANON, 0, None);
        s.munmap(0x11000, 1);
        assert_eq!(spans(&s), [(0x10000, 0x11000, "rw-p".into()), (0x12000, 0x13000, "rw-p".into())]);
        s.mmap(0x10800 & !0xfff, 2 * PAGE, libc::PROT_READ as u64, ANON | libc::MAP_FIXED as u64, 0, None);
        assert_eq!(spans(&s), [(0x10000, 0x12000, "r--p".into()), (0x12000, 0x13000, "rw-p".into())]);
    }

    #[test]
    fn mremap_moves_grows_and_keeps_file_offsets() {
        let mut s = ShadowSpace::default();
        let file = FileIdentity { dev: (8, 1), inode: 7, path: "/f".into(), overlay: false };
        s.mmap(0x10000, 2 * PAGE, RW, libc::MAP_PRIVATE as u64, 0x3000, Some(file));
        s.mremap(0x10000, 2 * PAGE, 3 * PAGE, libc::MREMAP_MAYMOVE as u64, 0x40000);
        let r = &s.regions()[0];
        assert_eq!((r.start, r.end, r.offset, r.inode), (0x40000, 0x43000, 0x3000, 7));
        assert_eq!(s.regions().len(), 1);
        s.mremap(0x40000, 3 * PAGE, PAGE, 0, 0x40000);
        assert_eq!((s.regions()[0].start, s.regions()[0].end), (0x40000, 0x41000));
    }

    #[test]
    fn brk_grows_and_shrinks_the_heap() {
        let mut s = ShadowSpace::seed(vec![], 0x5000_0000);
        s.brk(0x5000_0000 + 3 * PAGE + 1);
        assert_eq!((s.regions()[0].start, s.regions()[0].end), (0x5000_0000, 0x5000_4000));
        assert_eq!(s.regions()[0].backing, Backing::Heap);
        s.brk(0x5000_0000);
        assert!(s.regions().is_empty());
    }

    #[test]
    fn cow_remap_rewrites_the_offset() {
        let mut s = ShadowSpace::default();
        s.remap_pfn_range(0x10000, 0x20 | 0x10 | 0x1, 0x531c);
        let dev = FileIdentity { dev: (0, 5), inode: 9, path: "/dev/x".into(), overlay: false };
        s.mmap(0x10000, PAGE, RW, libc::MAP_PRIVATE as u64, 0, Some(dev));
        assert_eq!(s.regions()[0].offset, 0x531c000);
    }

    #[test]
    fn compare_finds_each_planted_difference() {
        let shadow = vec![anon(0x1000, 0x4000, "rw-p")];
        assert!(compare(&shadow, &shadow).is_empty());
        // The kernel drew two VMAs where the shadow has one: not a difference.
        let split = vec![anon(0x1000, 0x2000, "rw-p"), anon(0x2000, 0x4000, "rw-p")];
        assert!(compare(&shadow, &split).is_empty());
        let perms = vec![anon(0x1000, 0x2000, "rw-p"), anon(0x2000, 0x3000, "r--p"), anon(0x3000, 0x4000, "rw-p")];
        let d = compare(&shadow, &perms);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].start, d[0].end, d[0].field), (0x2000, 0x3000, "perms"));
        assert_eq!((d[0].expected.as_str(), d[0].found.as_str()), ("rw-p", "r--p"));
        let shifted = vec![anon(0x2000, 0x5000, "rw-p")];
        let d = compare(&shadow, &shifted);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!((d[0].start, d[0].end, d[0].found.as_str()), (0x1000, 0x2000, "unmapped"));
        assert_eq!((d[1].start, d[1].end, d[1].expected.as_str()), (0x4000, 0x5000, "unmapped"));
    }

    /// An overlayfs file: maps may name the layer's device and inode (6.1); the path,
    /// perms and offset are still compared.
    #[test]
    fn overlay_files_are_compared_without_device_and_inode() {
        let mut s = ShadowSpace::default();
        let file = FileIdentity { dev: (0, 0x17), inode: 14, path: "/o/m/f".into(), overlay: true };
        s.mmap(0x10000, PAGE, 1, libc::MAP_PRIVATE as u64, PAGE, Some(file));
        let mut layer = s.regions().to_vec();
        (layer[0].dev, layer[0].inode, layer[0].overlay) = ((0, 0x16), 99, false);
        assert!(compare(s.regions(), &layer).is_empty(), "{:?}", compare(s.regions(), &layer));
        layer[0].offset = 0;
        assert_eq!(compare(s.regions(), &layer)[0].field, "offset");
        let mut plain = s.regions().to_vec();
        plain[0].overlay = false;
        (layer[0].offset, layer[0].backing) = (PAGE, Backing::File("/o/m/f".into()));
        let fields: Vec<_> = compare(&plain, &layer).iter().map(|d| d.field).collect();
        assert_eq!(fields, ["device", "inode"]);
    }
}
