//! The address-space model: what a process's maps must look like if the calls it made
//! are the whole story. The one place the kernel's rules for each cause live (split,
//! remove, MAP_FIXED replace, mremap move/grow/shrink/dup/DONTUNMAP, brk, MAP_GROWSDOWN
//! growth, fork inheritance, SysV shm, remap_file_pages, shadow stacks, madvise's fork
//! flags…); verify's shadow compares it with /proc/<pid>/maps, report's timeline replays
//! its [`Change`]s.
//!
//! Regions are kept as the calls cut them (never merged here), so a caller that keeps
//! history per piece sees every split; `normalize` merges for comparison.

use super::region::{
    Backing, Hidden, Name, PAGE, Region, SHARED_ANON_PATH, normalize, page_up, perms,
};
use super::regions::RegionMap;

const MAP_SHARED_TYPE_MASK: u64 = libc::MAP_TYPE as u64;
const MAP_PRIVATE: u64 = libc::MAP_PRIVATE as u64;
/// Anonymous memory the kernel may zero under pressure (6.11+): private, not copied to a
/// child (VM_WIPEONFORK), whatever the mapping type's other bits say.
const MAP_DROPPABLE: u64 = libc::MAP_DROPPABLE as u64;
const MAP_ANONYMOUS: u64 = libc::MAP_ANONYMOUS as u64;
const MAP_GROWSDOWN: u64 = libc::MAP_GROWSDOWN as u64;
const MREMAP_FIXED: u64 = libc::MREMAP_FIXED as u64;
const MREMAP_DONTUNMAP: u64 = 4;
const SHM_RDONLY: u64 = 0o10000;
const SHM_EXEC: u64 = 0o100000;
use mmtrace_driver_abi::vm::{MAYWRITE as VM_MAYWRITE, SHARED as VM_SHARED};
/// /dev/zero: character device 1:5.
const DEV_ZERO: (u32, u32) = (1, 5);
/// The device maps shows for shmem's internal mount (shared anonymous memory, SysV
/// segments); not compared (it is whatever the kernel allocated at boot).
pub const SHMEM_DEV: (u32, u32) = (0, 1);

/// The file behind an fd at the moment of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: (u32, u32),
    pub inode: u64,
    /// As the file system has it (raw bytes: not escaped).
    pub path: Vec<u8>,
    /// On overlayfs (see `Region::overlay`).
    pub overlay: bool,
    /// A character or block device's number (st_rdev), `None` for other files.
    pub rdev: Option<(u32, u32)>,
}

/// Why a piece ended or began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Created,
    ProtChanged,
    MovedAway,
    MovedHere,
    Grown,
    Shrunk,
    Removed,
    /// A MAP_FIXED mapping (or MREMAP_FIXED target, remap_file_pages) took its place.
    Replaced,
    Exec,
    /// Taken from the kernel's view (a change the model does not explain).
    Adopted,
}

impl Why {
    /// As a person reads it (report's timelines).
    pub fn name(self) -> &'static str {
        match self {
            Why::Created => "created",
            Why::ProtChanged => "prot changed",
            Why::MovedAway => "moved away",
            Why::MovedHere => "moved here",
            Why::Grown => "grown",
            Why::Shrunk => "shrunk",
            Why::Removed => "removed",
            Why::Replaced => "replaced",
            Why::Exec => "exec",
            Why::Adopted => "adopted",
        }
    }
}

/// One step of a change, in the order the model made it. The region list after a step is
/// always sorted and non-overlapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The region containing `at` (strictly inside) was cut in two.
    Split { at: u64 },
    /// The region `[start, end)` (exactly one, after the splits) left the space.
    End { start: u64, end: u64, why: Why },
    /// A region began. `from`: where what it continues was just before the change (the
    /// source of a move or duplicate: the same offset into it; the piece a prot change
    /// replaced; the last byte of what was grown).
    Begin {
        region: Region,
        why: Why,
        from: Option<u64>,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Heap {
    start: u64,
    /// The last break a call returned (`None`: only the start is known, from
    /// /proc/<pid>/stat, and the top is the `[heap]` region's end).
    brk: Option<u64>,
    /// The start was guessed from the first brk call (a trace), not read from the kernel.
    guessed: bool,
}

#[derive(Clone, Debug, Default)]
pub struct AddressSpace {
    regions: RegionMap,
    heap: Option<Heap>,
    /// mm->start_stack (/proc/<pid>/stat): maps names `[stack]` the VMA that holds it.
    start_stack: Option<u64>,
    /// vm_start → first PFN of a remap_pfn_range on a copy-on-write mapping: the kernel
    /// rewrites vm_pgoff to that PFN, so maps shows PFN × page size as the offset.
    cow_remaps: Vec<(u64, u64)>,
    /// shmid → segment size, from shmat (shmdt needs it; the segment may be gone by then).
    shm_sizes: Vec<(u64, u64)>,
    /// `Some`: every change is recorded for [`AddressSpace::take_changes`].
    changes: Option<Vec<Change>>,
    /// `Some`: the ranges changes touched, for [`AddressSpace::take_touched`].
    touched: Option<Vec<(u64, u64)>>,
    /// How many of `touched` the last [`AddressSpace::merge`] merged around.
    merged_upto: usize,
}

impl AddressSpace {
    /// From the kernel's view (at attach or exec) and /proc/<pid>/stat's start_brk.
    pub fn from_kernel(regions: Vec<Region>, start_brk: u64) -> Self {
        Self {
            regions: RegionMap::from_regions(normalize(regions)),
            heap: (start_brk != 0).then_some(Heap {
                start: start_brk,
                brk: None,
                guessed: false,
            }),
            ..Self::default()
        }
    }

    /// Where the kernel put the initial stack (/proc/<pid>/stat's startstack): what
    /// decides which part of a stack split by mprotect or mlock maps names `[stack]`.
    pub fn with_start_stack(mut self, start_stack: u64) -> Self {
        self.start_stack = (start_stack != 0).then_some(start_stack);
        self
    }

    /// An empty space that records its changes (report's replay).
    pub fn recording() -> Self {
        Self {
            changes: Some(Vec::new()),
            ..Self::default()
        }
    }

    pub fn take_changes(&mut self) -> Vec<Change> {
        self.changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Notes the ranges each change touches from now on, for [`AddressSpace::take_touched`]
    /// (verify: a checkpoint compares only those, and merges only there).
    pub fn track_touched(&mut self) {
        self.touched.get_or_insert_with(Vec::new);
    }

    /// The ranges changed since the last call (unsorted, may overlap); what they hold is
    /// merged first.
    pub fn take_touched(&mut self) -> Vec<(u64, u64)> {
        self.merge();
        self.merged_upto = 0;
        self.touched
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Sorted, non-overlapping, as the calls cut them.
    pub fn regions(&self) -> &RegionMap {
        &self.regions
    }

    /// Merges neighbours that continue each other (what the kernel's vma_merge would do,
    /// give or take): keeps a long-lived model small. Only around what changed since the
    /// last merge when touched ranges are tracked. Not for a recording space.
    pub fn merge(&mut self) {
        if self.changes.is_some() {
            return;
        }
        match &self.touched {
            Some(touched) => {
                let pending: Vec<(u64, u64)> = touched[self.merged_upto..].to_vec();
                for (start, end) in pending {
                    self.regions.merge_around(start, end);
                }
                self.merged_upto = self.touched.as_ref().map_or(0, Vec::len);
            }
            None => {
                self.regions = RegionMap::from_regions(normalize(self.regions.to_vec()));
            }
        }
    }

    fn log(&mut self, change: impl FnOnce() -> Change) {
        if let Some(c) = &mut self.changes {
            c.push(change());
        }
    }

    fn touch(&mut self, start: u64, end: u64) {
        if let Some(t) = &mut self.touched {
            t.push((start, end));
        }
    }

    pub fn region_at(&self, addr: u64) -> Option<&Region> {
        self.regions.at(addr)
    }

    /// Cuts the region containing `addr` (strictly inside) in two.
    fn split_at(&mut self, addr: u64) {
        if self.regions.split_at(addr) {
            self.log(|| Change::Split { at: addr });
            self.touch(addr, addr);
        }
    }

    /// Removes the parts of `[start, end)` that `wanted` selects (cutting those at the
    /// range's edges) and returns them.
    fn take_where(
        &mut self,
        start: u64,
        end: u64,
        why: Why,
        wanted: impl Fn(&Region) -> bool,
    ) -> Vec<Region> {
        if start >= end {
            return Vec::new();
        }
        let selected: Vec<u64> = self
            .regions
            .overlapping(start, end)
            .filter(|r| wanted(r))
            .map(|r| r.start)
            .collect();
        let mut taken = Vec::new();
        for s in selected {
            if s < start {
                self.split_at(start);
            }
            let key = s.max(start);
            if self.regions.at(key).is_some_and(|r| r.end > end) {
                self.split_at(end);
            }
            let Some(r) = self.regions.remove(key) else {
                continue;
            };
            self.log(|| Change::End {
                start: r.start,
                end: r.end,
                why,
            });
            self.touch(r.start, r.end);
            taken.push(r);
        }
        taken
    }

    fn take(&mut self, start: u64, end: u64, why: Why) -> Vec<Region> {
        self.take_where(start, end, why, |_| true)
    }

    /// Puts `region` where nothing is (the caller cleared the range).
    fn put(&mut self, mut region: Region, why: Why, from: Option<u64>) {
        if region.start >= region.end {
            return;
        }
        if region.backing == Backing::Anonymous && self.over_initial_heap(&region) {
            region.backing = Backing::Heap;
        }
        self.log(|| Change::Begin {
            region: region.clone(),
            why,
            from,
        });
        self.touch(region.start, region.end);
        self.regions.insert(region);
    }

    /// Whether maps names `region` `[heap]`: any anonymous VMA over the initial heap's
    /// range is (fs/proc's `vma_is_initial_heap`: `vm_start < mm->brk && vm_end >
    /// mm->start_brk`), not only what brk made. An mmap at a hint over a heap that is still
    /// empty gets the name too (seen: chromium's children reserving 512 MiB there).
    fn over_initial_heap(&self, region: &Region) -> bool {
        self.initial_heap()
            .is_some_and(|(start, brk)| region.start < brk && region.end > start)
    }

    /// `[start_brk, brk)` as the kernel's mm holds them, when the start is known.
    fn initial_heap(&self) -> Option<(u64, u64)> {
        let heap = self.heap?;
        let brk = heap.brk.unwrap_or_else(|| {
            self.region_at(heap.start)
                .filter(|r| r.backing == Backing::Heap)
                .map_or(heap.start, |r| r.end)
        });
        Some((heap.start, brk))
    }

    /// `regions` (the model's, sorted) named as maps names them inside the kernel's VMAs
    /// `kernel` (sorted, whole: not clipped to a window). `[heap]` and `[stack]` are names
    /// of a *VMA*, not of memory: maps gives `[heap]` to an anonymous VMA that reaches
    /// into `[start_brk, brk)` and `[stack]` to the one that holds `start_stack`, and
    /// where one VMA ends is the kernel's merge decision, which the model does not make.
    /// brk never grows the heap into the anonymous VMA below its start, but an mprotect,
    /// mlock or madvise over both merges them when their flags agree, and the whole VMA
    /// is then `[heap]` (a binary's bss right below the heap: randomization off,
    /// `setarch -R`, gdb's default). An mprotect of a page inside the stack splits it, and
    /// only the piece holding `start_stack` stays `[stack]`; the pieces merge back when
    /// their flags agree again. The model's heap bounds and stack start still decide, so
    /// a wrong break is still seen; only a VMA that touches the heap without overlapping
    /// it may have either name, as the kernel's rule changed there.
    pub fn named_in(&self, regions: Vec<Region>, kernel: &[Region]) -> Vec<Region> {
        let heap = self.initial_heap();
        if heap.is_none() && self.start_stack.is_none() {
            return regions;
        }
        let renamed = |r: &Region| match r.backing {
            Backing::Anonymous | Backing::Heap => heap.is_some(),
            Backing::Stack => self.start_stack.is_some(),
            _ => false,
        };
        let kernel_anonymous = |k: &Region| {
            matches!(
                k.backing,
                Backing::Anonymous | Backing::Heap | Backing::Stack
            )
        };
        let name_in = |r: &Region, k: &Region| match (r.backing.clone(), heap, self.start_stack) {
            (Backing::Stack, _, Some(at)) if !(k.start <= at && at <= k.end) => Backing::Anonymous,
            (Backing::Anonymous | Backing::Heap, Some((start, brk)), _) => {
                if k.start < brk && k.end > start {
                    Backing::Heap
                } else if k.start <= brk && k.end >= start && k.backing == Backing::Heap {
                    // A VMA that only touches the heap: `[heap]` on kernels that compare
                    // inclusively (`vm_end >= start_brk`: 6.1, and 6.6's first
                    // vma_is_initial_heap), not on later ones. With an empty heap right
                    // after a bss (randomization off) 6.1 names the bss `[heap]` at exec.
                    Backing::Heap
                } else {
                    Backing::Anonymous
                }
            }
            (backing, _, _) => backing,
        };
        let slice = |r: &Region, start: u64, end: u64| Region {
            end,
            ..r.upper_part(start)
        };
        let mut out = Vec::with_capacity(regions.len());
        for region in regions {
            if !renamed(&region) {
                out.push(region);
                continue;
            }
            let mut at = region.start;
            let first = kernel.partition_point(|k| k.end <= region.start);
            for k in kernel[first..].iter().take_while(|k| k.start < region.end) {
                if !kernel_anonymous(k) {
                    continue;
                }
                let (start, end) = (k.start.max(region.start), k.end.min(region.end));
                if at < start {
                    out.push(slice(&region, at, start));
                }
                let mut piece = slice(&region, start, end);
                piece.backing = name_in(&region, k);
                out.push(piece);
                at = end;
            }
            if at < region.end {
                out.push(slice(&region, at, region.end));
            }
        }
        out
    }

    /// What a MAP_FIXED mapping does: whatever was there goes.
    fn replace(&mut self, region: Region, why: Why, from: Option<u64>) {
        self.take(region.start, region.end, Why::Replaced);
        self.put(region, why, from);
    }

    /// Changes the regions in `[start, end)` that `change` alters (returns `Some`), cutting
    /// them at the range's edges; the others are left whole.
    fn update(
        &mut self,
        start: u64,
        end: u64,
        why: Why,
        change: impl Fn(&Region) -> Option<Region>,
    ) {
        let changed: Vec<u64> = self
            .regions
            .overlapping(start, end)
            .filter(|r| change(r).is_some())
            .map(|r| r.start)
            .collect();
        for s in changed {
            let old = self.take(s.max(start), end.min(self.region_end(s)), why);
            for r in old {
                let new = change(&r).expect("selected above");
                self.put(new, why, Some(r.start));
            }
        }
    }

    fn region_end(&self, start: u64) -> u64 {
        self.region_at(start).map_or(start, |r| r.end)
    }

    /// Flags that maps does not show: cut at the range's edges where they change.
    fn set_hidden(&mut self, start: u64, end: u64, f: impl Fn(&mut Hidden)) {
        let keys: Vec<u64> = self
            .regions
            .overlapping(start, end)
            .filter(|r| {
                let mut h = r.hidden;
                f(&mut h);
                h != r.hidden
            })
            .map(|r| r.start)
            .collect();
        for s in keys {
            if s < start {
                self.split_at(start);
            }
            let key = s.max(start);
            if self.regions.at(key).is_some_and(|r| r.end > end) {
                self.split_at(end);
            }
            if let Some(r) = self.regions.starting_at_mut(key) {
                f(&mut r.hidden);
                let (s, e) = (r.start, r.end);
                self.touch(s, e);
            }
        }
    }

    /// A successful mmap that returned `addr`. `file`: the fd's file (`None` for
    /// anonymous memory, or when it could not be known: then the mapping is still made,
    /// named by nothing, and the caller must treat it as unmodelled).
    pub fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
        offset: u64,
        file: Option<FileIdentity>,
    ) {
        let kind = flags & MAP_SHARED_TYPE_MASK;
        let droppable = kind == MAP_DROPPABLE;
        let shared = kind != MAP_PRIVATE && !droppable;
        let mut region = Region::anonymous(
            addr,
            addr.saturating_add(page_up(len)),
            &perms(prot, shared),
        );
        region.hidden.grows_down = flags & MAP_GROWSDOWN != 0;
        region.hidden.wipe_on_fork = droppable;
        match file {
            _ if flags & MAP_ANONYMOUS != 0 => {
                if shared {
                    shmem_zero(&mut region, 0);
                }
            }
            // mmap_zero (drivers/char/mem.c): a shared mapping of /dev/zero becomes shmem.
            Some(f) if shared && f.rdev == Some(DEV_ZERO) => shmem_zero(&mut region, offset),
            Some(f) => {
                region.offset = offset;
                region.dev = f.dev;
                region.inode = f.inode;
                region.backing = Backing::File(Name::from_path(&f.path));
                region.overlay = f.overlay;
            }
            None => {
                region.offset = offset;
                region.backing = Backing::File(Name::default());
            }
        }
        if let Some(i) = self.cow_remaps.iter().position(|&(start, _)| start == addr) {
            region.offset = self.cow_remaps.swap_remove(i).1 * PAGE;
        }
        self.replace(region, Why::Created, None);
    }

    /// A mapping a kernel probe reported on its own (an exec's ELF loader): whatever was
    /// there goes.
    pub fn map(&mut self, region: Region) {
        self.replace(region, Why::Created, None);
    }

    /// `region` where nothing is mapped in its range (a probe-reported VMA the model
    /// did not have).
    pub fn fill(&mut self, region: Region) {
        let mut cursor = region.start;
        let covered: Vec<(u64, u64)> = self
            .regions
            .overlapping(region.start, region.end)
            .map(|r| (r.start, r.end))
            .collect();
        let mut gaps = Vec::new();
        for (s, e) in covered {
            if s > cursor {
                gaps.push((cursor, s));
            }
            cursor = cursor.max(e);
        }
        if cursor < region.end {
            gaps.push((cursor, region.end));
        }
        for (s, e) in gaps {
            let mut piece = clip(&region, s, e);
            piece.start = s;
            if piece.has_file() {
                piece.offset = region.offset.wrapping_add(s - region.start);
            }
            self.put(piece, Why::Created, None);
        }
    }

    pub fn munmap(&mut self, addr: u64, len: u64) {
        self.take(addr, addr.saturating_add(page_up(len)), Why::Removed);
    }

    /// mprotect and pkey_mprotect (the key shows only in smaps). Regions that already
    /// have the protection are not cut (mprotect_fixup returns early for them).
    pub fn mprotect(&mut self, addr: u64, len: u64, prot: u64) {
        let end = addr.saturating_add(page_up(len));
        self.update(addr, end, Why::ProtChanged, |r| {
            let p = perms(prot, r.shared());
            (p != r.perms).then(|| Region {
                perms: p,
                ..r.clone()
            })
        });
    }

    /// A mprotect that failed with ENOMEM on a hole: the kernel changed every region from
    /// `addr` up to the hole (do_mprotect_pkey's loop) before it returned.
    pub fn mprotect_to_hole(&mut self, addr: u64, len: u64, prot: u64) {
        let end = addr.saturating_add(page_up(len));
        let mut cursor = addr;
        while let Some(r) = self.region_at(cursor) {
            cursor = r.end;
            if cursor >= end {
                break;
            }
        }
        if cursor > addr {
            self.mprotect(addr, cursor.min(end) - addr, prot);
        }
    }

    /// A successful mremap of `[old, old+old_len)` that returned `new`.
    pub fn mremap(&mut self, old: u64, old_len: u64, new_len: u64, flags: u64, new: u64) {
        let (old_len, new_len) = (page_up(old_len), page_up(new_len));
        let end = |base: u64, len: u64| base.saturating_add(len);
        if new == old && old_len > 0 {
            if new_len < old_len {
                self.take(end(old, new_len), end(old, old_len), Why::Shrunk);
            } else if new_len > old_len {
                let top = end(old, old_len);
                let grown = self.region_at(top - 1).map(|r| r.upper_part(top));
                let mut grown = grown.unwrap_or_else(|| Region::anonymous(top, top, "rw-p"));
                grown.end = end(old, new_len);
                self.replace(grown, Why::Grown, Some(top - 1));
            }
            return;
        }
        // old_len 0 duplicates a shared mapping (a second mapping of the same pages);
        // MREMAP_DONTUNMAP leaves the old range mapped (emptied). Either way the source
        // stays.
        let keep_source = old_len == 0 || flags & MREMAP_DONTUNMAP != 0;
        if flags & MREMAP_FIXED != 0 && old_len == new_len && old_len > 0 {
            return self.move_pieces(old, old_len, new, keep_source);
        }
        let source_len = if old_len == 0 { new_len } else { old_len };
        let mut source: Vec<Region> = self
            .regions
            .overlapping(old, end(old, source_len))
            .map(|r| clip(r, old, end(old, source_len)))
            .collect();
        if old_len == 0 {
            // A duplicate copies the one VMA at `old` (copy_vma), grown to new_len: not
            // whatever lies after it.
            let first_piece = source.first().filter(|r| r.start == old).cloned();
            let mut kept: Vec<Region> = Vec::new();
            for r in source.into_iter() {
                if kept
                    .last()
                    .map_or(first_piece.as_ref() == Some(&r), |l| l.continues(&r))
                {
                    kept.push(r);
                } else {
                    break;
                }
            }
            source = kept;
        }
        if !keep_source {
            self.take(old, end(old, old_len), Why::MovedAway);
        }
        self.take(new, end(new, new_len), Why::Replaced);
        let new_end = end(new, new_len);
        let mut last: Option<Region> = None;
        for r in source {
            let mut moved = r.clone();
            moved.start = end(new, r.start - old);
            moved.end = end(new, r.end - old).min(new_end);
            let at = r.start;
            last = Some(r);
            if moved.start < moved.end {
                self.put(moved, Why::MovedHere, Some(at));
            }
        }
        // A source the model never saw still arrives somewhere (a trace that began after
        // it was mapped); verify's model always has it.
        let arrived = match &last {
            Some(r) => (r.end - old).min(new_len),
            None => {
                let len = new_len.min(source_len);
                self.put(
                    Region::anonymous(new, end(new, len), "rw-p"),
                    Why::MovedHere,
                    None,
                );
                len
            }
        };
        if new_len > arrived {
            // Growth continues the last piece's mapping.
            let mut grown = match &last {
                Some(r) => r.upper_part(r.end),
                None => Region::anonymous(0, 0, "rw-p"),
            };
            (grown.start, grown.end) = (end(new, arrived), new_end);
            self.put(grown, Why::Grown, last.as_ref().map(|r| r.end - 1));
        }
    }

    /// An mremap that only moves (MREMAP_FIXED, the length kept): since 6.17 the range
    /// may hold several VMAs with holes between them (mm/mremap.c remap_move). Each mapped
    /// piece moves by the same distance and replaces only its own destination, so what
    /// lay under the holes stays; the source goes (stays, emptied, with DONTUNMAP).
    /// Before 6.17 such a call succeeded only for one VMA, which this covers as well.
    fn move_pieces(&mut self, old: u64, len: u64, new: u64, keep_source: bool) {
        let end = old.saturating_add(len);
        let pieces: Vec<Region> = self
            .regions
            .overlapping(old, end)
            .map(|r| clip(r, old, end))
            .collect();
        if pieces.is_empty() {
            // A source the model never saw still arrives (a trace that began after it
            // was mapped); verify's model always has it.
            self.replace(
                Region::anonymous(new, new.saturating_add(len), "rw-p"),
                Why::MovedHere,
                None,
            );
            return;
        }
        for piece in pieces {
            let mut moved = piece.clone();
            moved.start = new.saturating_add(piece.start - old);
            moved.end = new.saturating_add(piece.end - old);
            if !keep_source {
                self.take(piece.start, piece.end, Why::MovedAway);
            }
            self.take(moved.start, moved.end, Why::Replaced);
            self.put(moved, Why::MovedHere, Some(piece.start));
        }
    }

    /// brk(`addr`) returned `ret` (the break, whether it moved or not). The heap is
    /// `[start_brk, page_up(brk))`.
    pub fn brk(&mut self, addr: u64, ret: u64) {
        let heap = match self.heap {
            // A guessed start and a brk(0) answering another break: a new program (an
            // exec the trace did not show) or lost events: start over from there.
            Some(h) if !(h.guessed && addr == 0 && h.brk.is_some_and(|b| b != ret)) => h,
            _ => {
                self.heap = Some(Heap {
                    start: ret,
                    brk: Some(ret),
                    guessed: true,
                });
                return;
            }
        };
        if ret < heap.start {
            return;
        }
        let old_top = match heap.brk {
            Some(b) => page_up(b.max(heap.start)),
            None => self
                .region_at(heap.start)
                .filter(|r| r.backing == Backing::Heap)
                .map_or(page_up(heap.start), |r| r.end),
        };
        let new_top = page_up(ret);
        if new_top > old_top {
            let mut region = Region::anonymous(old_top, new_top, "rw-p");
            region.backing = Backing::Heap;
            self.replace(region, Why::Grown, None);
        } else if new_top < old_top {
            self.take(new_top, old_top, Why::Shrunk);
        }
        self.heap = Some(Heap {
            brk: Some(ret),
            ..heap
        });
    }

    /// execve replaced the whole space (the caller reseeds from the kernel's view, or
    /// replays what the new program maps).
    pub fn exec(&mut self) {
        self.take(0, u64::MAX, Why::Exec);
        self.heap = None;
        self.cow_remaps.clear();
        self.shm_sizes.clear();
    }

    /// shmat returned `addr`: the segment `shmid` of `size` bytes, named by its `key`
    /// (ipc/shm.c: the file is `SYSV%08x`, unlinked; its inode is the shmid).
    pub fn shmat(&mut self, addr: u64, shmid: u64, key: u32, size: u64, flags: u64) {
        let prot = libc::PROT_READ as u64
            | if flags & SHM_RDONLY == 0 {
                libc::PROT_WRITE as u64
            } else {
                0
            }
            | if flags & SHM_EXEC != 0 {
                libc::PROT_EXEC as u64
            } else {
                0
            };
        let mut region =
            Region::anonymous(addr, addr.saturating_add(page_up(size)), &perms(prot, true));
        region.dev = SHMEM_DEV;
        region.inode = shmid;
        region.backing = Backing::File(Name(format!("/SYSV{key:08x} (deleted)").into_bytes()));
        region.hidden.sysv_shm = true;
        self.shm_sizes.retain(|&(id, _)| id != shmid);
        self.shm_sizes.push((shmid, size));
        self.replace(region, Why::Created, None);
    }

    /// The segment (shmid) shmdt(`addr`) would detach.
    pub fn shm_attached_at(&self, addr: u64) -> Option<u64> {
        self.regions
            .from(addr)
            .find(|r| r.hidden.sysv_shm && r.start >= addr && r.offset == r.start - addr)
            .map(|r| r.inode)
    }

    /// shmdt(`addr`) as ksys_shmdt does it: the first SysV region at or above `addr` whose
    /// offset says it was attached at `addr` names the segment; every region of that
    /// segment attached at `addr` within the segment's size goes. `size`: the segment's
    /// size when the caller knows it. Returns whether anything went.
    pub fn shmdt(&mut self, addr: u64, size: Option<u64>) -> bool {
        let attached_here =
            |r: &Region| r.hidden.sysv_shm && r.start >= addr && r.offset == r.start - addr;
        let Some(first) = self.regions.from(addr).find(|r| attached_here(r)) else {
            return false;
        };
        let shmid = first.inode;
        let first_start = first.start;
        let size = size
            .or_else(|| {
                self.shm_sizes
                    .iter()
                    .find(|&&(id, _)| id == shmid)
                    .map(|&(_, s)| s)
            })
            .map_or(u64::MAX, page_up);
        self.take_where(addr, u64::MAX, Why::Removed, |r| {
            attached_here(r) && r.inode == shmid && (r.start == first_start || r.end - addr <= size)
        });
        true
    }

    /// remap_file_pages(start, size, 0, pgoff, …): emulated since 4.0 by a MAP_FIXED
    /// mmap of the same file with the region's permissions at offset pgoff × PAGE
    /// (mm/mmap.c). Returns false when nothing shared is mapped at `start`.
    pub fn remap_file_pages(&mut self, start: u64, size: u64, pgoff: u64) -> bool {
        let (start, size) = (start & !(PAGE - 1), size & !(PAGE - 1));
        let Some(r) = self
            .region_at(start)
            .filter(|r| r.shared() && r.has_file())
            .cloned()
        else {
            return false;
        };
        let region = Region {
            start,
            end: start.saturating_add(size),
            offset: pgoff.wrapping_mul(PAGE),
            ..r
        };
        self.replace(region, Why::Created, None);
        true
    }

    /// map_shadow_stack returned `addr`: alloc_shstk maps PROT_READ with VM_WRITE added,
    /// private anonymous (arch/x86/kernel/shstk.c): `rw-p`.
    pub fn map_shadow_stack(&mut self, addr: u64, size: u64) {
        self.replace(
            Region::anonymous(addr, addr.saturating_add(page_up(size)), "rw-p"),
            Why::Created,
            None,
        );
    }

    /// madvise's advice that sets flags maps does not show (the regions are cut where
    /// the flag changes). Returns whether `advice` is one of them.
    pub fn madvise(&mut self, addr: u64, len: u64, advice: u64) -> bool {
        let end = addr.saturating_add(page_up(len));
        match advice as i32 {
            libc::MADV_DONTFORK => self.set_hidden(addr, end, |h| h.dont_fork = true),
            libc::MADV_DOFORK => self.set_hidden(addr, end, |h| h.dont_fork = false),
            libc::MADV_WIPEONFORK => self.set_hidden(addr, end, |h| h.wipe_on_fork = true),
            libc::MADV_KEEPONFORK => self.set_hidden(addr, end, |h| h.wipe_on_fork = false),
            _ => return false,
        }
        true
    }

    /// A remap_pfn_range inside an mmap that is still under way (its syscall event comes
    /// after this one).
    pub fn remap_pfn_range(&mut self, vm_start: u64, vm_flags: u64, pfn: u64) {
        if vm_flags & (VM_SHARED | VM_MAYWRITE) == VM_MAYWRITE {
            self.cow_remaps.push((vm_start, pfn));
        }
    }

    /// The child's space at fork (kernel/fork.c dup_mmap): everything but the
    /// MADV_DONTFORK (VM_DONTCOPY) regions; MADV_WIPEONFORK regions stay mapped (empty).
    pub fn fork_child(&self) -> Self {
        Self {
            regions: RegionMap::from_regions(
                self.regions.iter().filter(|r| !r.hidden.dont_fork).cloned(),
            ),
            heap: self.heap,
            start_stack: self.start_stack,
            cow_remaps: Vec::new(),
            shm_sizes: self.shm_sizes.clone(),
            changes: self.changes.as_ref().map(|_| Vec::new()),
            touched: self.touched.as_ref().map(|_| Vec::new()),
            merged_upto: 0,
        }
    }

    /// Stack growth (a page fault, no syscall): every MAP_GROWSDOWN region (and
    /// `[stack]`) that the kernel's view shows extended downwards, with the same
    /// attributes, is extended to match. Returns the ranges grown.
    pub fn grow_down(&mut self, kernel: &[Region]) -> Vec<(u64, u64)> {
        let mut grown = Vec::new();
        let growers: Vec<Region> = self
            .regions
            .iter()
            .filter(|r| r.hidden.grows_down)
            .cloned()
            .collect();
        for r in growers {
            let Some(k) = kernel.iter().find(|k| k.start < r.start && r.start < k.end) else {
                continue;
            };
            if k.perms != r.perms || k.backing != r.backing {
                continue;
            }
            // Only into what the model has as free.
            let low = self
                .regions
                .before(r.start)
                .map_or(0, |p| p.end)
                .max(k.start);
            if low < r.start {
                let mut piece = r.clone();
                (piece.start, piece.end) = (low, r.start);
                if piece.has_file() {
                    piece.offset = r.offset.wrapping_sub(r.start - low);
                }
                self.put(piece, Why::Grown, Some(r.start));
                grown.push((low, r.start));
            }
        }
        grown
    }

    /// Takes `ranges` from the kernel's view: for a change the model does not explain.
    pub fn adopt(&mut self, kernel: &[Region], ranges: &[(u64, u64)]) {
        for &(start, end) in ranges {
            self.take(start, end, Why::Adopted);
            for k in kernel.iter().filter(|k| k.start < end && k.end > start) {
                let mut piece = clip(k, start, end);
                // What maps cannot show is kept from the region the model had (none: the
                // defaults).
                piece.hidden.sysv_shm = k.hidden.sysv_shm;
                self.put(piece, Why::Adopted, None);
            }
        }
    }

    /// Renames regions in `[start, end)` (a file renamed or unlinked: only the path text
    /// changed).
    pub fn rename(&mut self, start: u64, end: u64, name: &Name) {
        for key in self.regions.starts_overlapping(start, end) {
            if let Some(Backing::File(n)) =
                self.regions.starting_at_mut(key).map(|r| &mut r.backing)
            {
                n.clone_from(name);
            }
        }
    }
}

/// A shared anonymous mapping, or MAP_SHARED of /dev/zero (shmem_zero_setup: the
/// offset stays, the path and inode are shmem's).
fn shmem_zero(region: &mut Region, offset: u64) {
    region.offset = offset;
    region.dev = SHMEM_DEV;
    region.backing = Backing::File(Name(SHARED_ANON_PATH.to_vec()));
}

/// The part of `r` inside `[start, end)`.
fn clip(r: &Region, start: u64, end: u64) -> Region {
    let mut c = if r.start < start {
        r.upper_part(start)
    } else {
        r.clone()
    };
    c.end = c.end.min(end);
    c
}
