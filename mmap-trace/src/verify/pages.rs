//! The page check of `verify`, done incrementally (issue 20): a present page of a file
//! mapping whose (device, inode, index) got a PFN from a `page_cache` event must hold
//! that PFN in /proc/<pid>/pagemap.
//!
//! Re-reading every such page at every checkpoint made verify 76–431× slower on the
//! first (cold page cache) run of python3 or node. Between two checkpoints the answer
//! for a page can change only in these ways, and each has its own trigger here:
//!
//! | what changed | seen as | rechecked |
//! |---|---|---|
//! | the page left the page cache and came back (new PFN) | a `page_cache` event | every address mapping that (file, index), at the next checkpoint |
//! | what is mapped at an address (mmap, munmap, mremap, mprotect; anything the run loop's catch-all flags) | [`PageChecks::record`], [`PageChecks::touch_range`], [`PageChecks::touch_all`] | the pages in those ranges |
//! | a fault mapped a page that was not present, or a private copy was dropped (`MADV_DONTNEED`) and the file page faulted back (no event at all) | — | every page found not present, or not a file page, at its last check is read again at every checkpoint until it is a present file page |
//! | the kernel moved a cached page without a `page_cache` event (migration, compaction, khugepaged's collapse of a file range) | — | a full comparison, at least every [`FULL_INTERVAL`] |
//!
//! A page found present, holding its file PFN, stays so until one of those happens: it
//! is not read again. `--full` (self-tests) reads every known page at every checkpoint, as before.
//!
//! pagemap is read with one `pread` per run of neighbouring pages (gaps of up to
//! [`MERGE_GAP`] pages are read through), never page by page: procfs's `get_info` seeks
//! and refills an 8 KiB `BufReader`, i.e. walks 1,024 pages of page tables to return one.
//!
//! What a check costs beyond its preads is kept per run, not per page, where most pages
//! say nothing: the unsettled pages are runs of addresses, and an entry that is not a
//! present file page is one test of its bits (the page stays unsettled), with no lookup
//! of its mapping or file; a full pass walks each mapping beside its file's known PFNs.
//! Per page, a lookup of the file and the index, a list of pages to sort, and a copy of
//! each pread had cost three to four times the preads themselves in a cold chromium run.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::File,
    os::unix::fs::FileExt as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use procfs::process::{MemoryPageFlags, PageInfo};

use crate::{
    kernel::decode::Event,
    space::{Field, Region},
    verify::{
        kernel_view::{FileKey, KernelView},
        shadow::{Difference, PAGE},
    },
};

/// How often a full comparison runs however little changed: it is the only check of
/// page-cache moves that have no event (migration, compaction, khugepaged), which keep
/// the page mapped, so a periodic sample finds them while they last. A full pass costs
/// ~1 ms per 10,000 known pages (one pread per run), so 4 per second cost under 1% of a run.
pub const FULL_INTERVAL: Duration = Duration::from_millis(250);

/// The share of a process's time its full passes may take: a pass over many pages (each
/// of chromium's processes knows ~150,000 pages of its shared libraries) comes less often
/// than every FULL_INTERVAL.
const FULL_SHARE: f64 = 0.02;

/// In a known PFN: this process has checked the page once (`pfn_pages`).
const CHECKED: u64 = 1 << 63;

/// The pages found not present at their last check are read again at every checkpoint
/// while there are at most this many; above it, at most every [`UNSETTLED_INTERVAL`] (and
/// at every full pass). Each of chromium's 28 processes maps the same shared libraries,
/// whose pages the others' reads put in the page cache: ~100,000 unsettled pages each,
/// read again at each of its checkpoints, were 374 million pagemap entries in one cold
/// run (16 s of a 17 s run). A page that faults in is then checked within this interval,
/// or at the exit's full pass. Counted in pages, not runs.
const UNSETTLED_EVERY_TIME: usize = 2048;
const UNSETTLED_INTERVAL: Duration = Duration::from_millis(50);

/// Pages of a gap between two wanted pages that one pread reads through rather than
/// issuing a second call (a pagemap entry costs far less than a syscall).
pub const MERGE_GAP: u64 = 16;

/// What the page checks counted (reported in verify's summary).
#[derive(Clone, Copy, Debug, Default)]
pub struct PageStats {
    /// Present file pages whose PFN was compared (`pfn_checks`), and how many different
    /// pages (file and index) that was (`pfn_pages`): what a run covered, whatever the
    /// number of passes over them.
    pub checked: u64,
    pub pages: u64,
    /// Checkpoints that compared every known page (`--full`, the first one, after an
    /// exec or a `touch_all`, and every `FULL_INTERVAL`).
    pub full_passes: u64,
    /// pread calls on pagemap, and the entries they returned.
    pub reads: u64,
    pub entries: u64,
}

// The schema owns verify's summary record; what the page checks add to it is said here,
// with the checks.
impl crate::schema::VerifyStats {
    pub fn add_page_checks(&mut self, pages: &PageStats) {
        self.pfn_checks += pages.checked;
        self.pfn_pages += pages.pages;
        self.pfn_full_passes += pages.full_passes;
        self.pagemap_reads += pages.reads;
        self.pagemap_entries += pages.entries;
    }
}

/// One wanted page: its address and what the events say it holds.
#[derive(Clone, Copy)]
struct Wanted {
    addr: u64,
    file: FileKey,
    index: u64,
}

/// The page checks of one address space. See the module documentation for the rules;
/// the calls a run loop makes:
///
/// 1. [`record`](Self::record) every event as it is applied (page_cache events of any
///    traced process, since the page cache is shared; the others of this process).
///    Recording the same event twice (a batch replayed in another order) is harmless.
/// 2. [`touch_range`](Self::touch_range) / [`touch_all`](Self::touch_all) for anything
///    else that may have changed what is mapped (the catch-all).
/// 3. [`check`](Self::check) once per checkpoint, with the process stopped and the
///    maps read at that stop: it returns the PFN differences, and adopts the kernel's
///    PFN for each so it is reported once.
pub struct PageChecks {
    /// Every checkpoint compares every known page.
    full: bool,
    /// A full comparison at least this often (FULL_INTERVAL).
    full_interval: Duration,
    /// Self-test: every PFN recorded is off by one.
    plant_off_by_one: bool,
    /// PFNs from page_cache events, by file and page index.
    pfns: HashMap<FileKey, BTreeMap<u64, u64>>,
    /// Pages whose PFN was recorded since the last check.
    recorded: HashMap<FileKey, BTreeSet<u64>>,
    /// Page-aligned address ranges touched since the last check.
    touched: Vec<(u64, u64)>,
    touched_all: bool,
    /// Known pages found not present, or present but not file pages (private copies), at
    /// their last check, in address order: a fault can make them file pages without an
    /// event.
    unsettled: Vec<(u64, u64)>,
    last_full: Option<Instant>,
    /// When the unsettled pages were last read.
    last_unsettled: Option<Instant>,
    pagemap: Option<(u32, File)>,
    /// The last pread's bytes (kept: a full pass makes thousands of reads).
    buffer: Vec<u8>,
    pub stats: PageStats,
}

impl PageChecks {
    pub fn new(full: bool, plant_off_by_one: bool) -> Self {
        Self {
            full,
            full_interval: FULL_INTERVAL,
            plant_off_by_one,
            pfns: HashMap::new(),
            recorded: HashMap::new(),
            touched: Vec::new(),
            touched_all: true,
            unsettled: Vec::new(),
            last_full: None,
            last_unsettled: None,
            pagemap: None,
            buffer: Vec::new(),
            stats: PageStats::default(),
        }
    }

    /// A forked child's checks: the PFNs known so far (the page cache is shared), every
    /// page to be checked at its first checkpoint.
    pub fn fork(&self) -> Self {
        let mut child = Self::new(self.full, self.plant_off_by_one);
        child.full_interval = self.full_interval;
        child.pfns = self.pfns.clone();
        // The child has checked nothing yet.
        for known in child.pfns.values_mut() {
            for pfn in known.values_mut() {
                *pfn &= !CHECKED;
            }
        }
        child
    }

    /// Takes what an event says about pages: a PFN (page_cache), a changed range (the
    /// syscalls: the range asked for, and the result's for mmap and mremap, even when the
    /// call failed, since a failed MAP_FIXED may have unmapped its range), or a new
    /// address space (exec). brk is left out: it maps and unmaps anonymous memory only.
    pub fn record(&mut self, event: &Event) {
        match event {
            Event::PageCache(e) => {
                let file = ((e.dev >> 20, e.dev & 0xfffff), e.ino);
                let planted = u64::from(self.plant_off_by_one);
                let pages = 1u64 << e.order.min(20);
                let known = self.pfns.entry(file).or_default();
                let recorded = self.recorded.entry(file).or_default();
                for i in 0..pages {
                    let pfn = e.pfn + i + planted;
                    known
                        .entry(e.index + i)
                        .and_modify(|p| *p = pfn | (*p & CHECKED))
                        .or_insert(pfn);
                    recorded.insert(e.index + i);
                }
            }
            Event::Exec(_) => self.touch_all(),
            Event::Syscall(_) | Event::Mmap(_) => {
                let Some(call) = event.call() else { return };
                for (start, end) in crate::space::call_ranges(call.nr, call.args, call.ret) {
                    self.touch_range(start, end);
                }
            }
            _ => {}
        }
    }

    /// Anything in [start, end) may have changed: its known pages are read at the next
    /// check.
    pub fn touch_range(&mut self, start: u64, end: u64) {
        let start = start & !(PAGE - 1);
        let end = end.saturating_add(PAGE - 1) & !(PAGE - 1);
        if start < end {
            self.touched.push((start, end));
        }
    }

    /// Anything may have changed (an exec, a call the run loop cannot bound): the next
    /// check is a full one.
    pub fn touch_all(&mut self) {
        self.touched_all = true;
    }

    /// Whether the next check will compare every known page.
    fn due_full(&self) -> bool {
        self.full
            || self.touched_all
            || self
                .last_full
                .is_none_or(|t| t.elapsed() >= self.full_interval)
    }

    /// Compares the pages that could have changed (all known pages when a full pass is
    /// due) with pagemap, `kernel` being the kernel's view at this stop.
    pub fn check(&mut self, pid: u32, kernel: &KernelView, last: bool) -> Result<Vec<Difference>> {
        let started = Instant::now();
        let full = last || self.due_full();
        let with_unsettled = full
            || self.unsettled_pages() <= UNSETTLED_EVERY_TIME as u64
            || self
                .last_unsettled
                .is_none_or(|t| t.elapsed() >= UNSETTLED_INTERVAL);
        if with_unsettled {
            self.last_unsettled = Some(Instant::now());
        }
        if self.touched_all || self.pagemap.as_ref().is_none_or(|(p, _)| *p != pid) {
            // pagemap is bound to the address space it was opened on: reopen after exec.
            self.pagemap = None;
        }
        let mut pass = Pass::default();
        if full {
            self.check_every_known_page(pid, kernel, &mut pass)?;
        } else {
            let wanted = self.wanted(kernel);
            self.check_wanted(pid, &wanted, &mut pass)?;
            let unsettled = std::mem::take(&mut self.unsettled);
            // The pages just read are as found; the others stay unsettled unless read now.
            let unsettled = without_pages(&unsettled, &wanted);
            if with_unsettled {
                self.check_unsettled(pid, kernel, &unsettled, &mut pass)?;
            } else {
                pass.unsettled.extend(unsettled);
            }
        }
        // What is unsettled now: the whole set (a full pass, or every unsettled page read
        // again), or what the pages read now add to the rest.
        self.unsettled = merge_runs(pass.unsettled);
        self.recorded.clear();
        self.touched.clear();
        self.touched_all = false;
        if full {
            self.last_full = Some(started);
            self.stats.full_passes += 1;
            if !self.full {
                // A pass that takes long comes less often: at most FULL_SHARE of the time.
                let took = started.elapsed();
                self.full_interval = FULL_INTERVAL.max(took.mul_f64(1.0 / FULL_SHARE));
            }
        }
        Ok(pass.differences)
    }

    /// How many pages are unsettled.
    fn unsettled_pages(&self) -> u64 {
        self.unsettled.iter().map(|(s, e)| (e - s) / PAGE).sum()
    }

    /// The unsettled pages read again: a present file page among them is compared if the
    /// events gave its (file, index) a PFN, and settled; the others stay unsettled. Most
    /// are pages of shared libraries another process faulted into the page cache, not
    /// present here (~100,000 per chromium process): each costs a test of its entry, not
    /// a lookup.
    fn check_unsettled(
        &mut self,
        pid: u32,
        kernel: &KernelView,
        unsettled: &[(u64, u64)],
        pass: &mut Pass,
    ) -> Result<()> {
        let Self {
            pfns,
            pagemap,
            stats,
            buffer,
            ..
        } = self;
        let mut region: Option<&Region> = None;
        for (group, start, end) in pread_groups(unsettled, |&run| run) {
            let entries = read_pagemap(pagemap, stats, buffer, pid, start, end)?;
            for &(from, to) in group {
                for addr in (from..to).step_by(PAGE as usize) {
                    let raw = entries.at((addr - start) / PAGE);
                    if raw & PRESENT_FILE != PRESENT_FILE {
                        pass.unsettle(addr);
                        continue;
                    }
                    if region.is_none_or(|r| addr < r.start || addr >= r.end) {
                        region = kernel.regions().at(addr);
                    }
                    // Still wanted: a page whose (file, index) the events gave a PFN.
                    let Some(r) = region.filter(|r| r.inode != 0) else {
                        continue;
                    };
                    let file = (r.dev, r.inode);
                    let index = r.offset / PAGE + (addr - r.start) / PAGE;
                    let Some(known) = pfns.get_mut(&file).and_then(|k| k.get_mut(&index)) else {
                        continue;
                    };
                    compare(raw, Wanted { addr, file, index }, known, stats, pass);
                }
            }
        }
        Ok(())
    }

    /// The full pass: every known page of every file mapping of `kernel`, walked mapping
    /// by mapping beside the file's known PFNs (a full pass of a chromium process reads
    /// ~150,000 pages: a lookup per page, a list of them to sort, and a copy of each
    /// pread's entries had cost more than the reads).
    fn check_every_known_page(
        &mut self,
        pid: u32,
        kernel: &KernelView,
        pass: &mut Pass,
    ) -> Result<()> {
        // Runs of known pages no more than MERGE_GAP apart, mapping by mapping, in address
        // order: (mapping, first index, last index).
        let mut pieces: Vec<(&Region, u64, u64)> = Vec::new();
        for r in kernel.regions().iter().filter(|r| r.inode != 0) {
            let Some(known) = self.pfns.get(&(r.dev, r.inode)) else {
                continue;
            };
            let first = r.offset / PAGE;
            let end = first.saturating_add((r.end - r.start) / PAGE);
            let from = pieces.len();
            for &i in known.range(first..end).map(|(i, _)| i) {
                let mine = pieces.len() > from;
                match pieces.last_mut() {
                    Some(piece) if mine && i - piece.2 <= MERGE_GAP + 1 => piece.2 = i,
                    _ => pieces.push((r, i, i)),
                }
            }
        }
        let Self {
            pfns,
            pagemap,
            stats,
            buffer,
            ..
        } = self;
        let addr = |(r, _, _): &(&Region, u64, u64), i: u64| r.start + (i - r.offset / PAGE) * PAGE;
        // Neighbouring pieces (a library's segments are mapped side by side) share a
        // pread, as their pages would in address order.
        let span =
            |piece: &(&Region, u64, u64)| (addr(piece, piece.1), addr(piece, piece.2) + PAGE);
        for (group, start, end) in pread_groups(&pieces, span) {
            let entries = read_pagemap(pagemap, stats, buffer, pid, start, end)?;
            for piece in group {
                let (r, from, to) = *piece;
                let file = (r.dev, r.inode);
                let Some(known) = pfns.get_mut(&file) else {
                    continue;
                };
                for (&index, known) in known.range_mut(from..=to) {
                    let page = addr(piece, index);
                    let w = Wanted {
                        addr: page,
                        file,
                        index,
                    };
                    compare(entries.at((page - start) / PAGE), w, known, stats, pass);
                }
            }
        }
        Ok(())
    }

    /// The pages of `wanted` (in address order), one pread per run of neighbours.
    fn check_wanted(&mut self, pid: u32, wanted: &[Wanted], pass: &mut Pass) -> Result<()> {
        let Self {
            pfns,
            pagemap,
            stats,
            buffer,
            ..
        } = self;
        for (run, start, end) in pread_groups(wanted, |w| (w.addr, w.addr + PAGE)) {
            let entries = read_pagemap(pagemap, stats, buffer, pid, start, end)?;
            for w in run {
                let Some(known) = pfns.get_mut(&w.file).and_then(|k| k.get_mut(&w.index)) else {
                    continue;
                };
                compare(entries.at((w.addr - start) / PAGE), *w, known, stats, pass);
            }
        }
        Ok(())
    }

    /// The known pages of `kernel`'s file mappings that may have changed since the last
    /// check, in address order: the touched ranges and the files of recorded pages, each
    /// looked up where it is (the unsettled pages are read apart, by runs).
    fn wanted(&self, kernel: &KernelView) -> Vec<Wanted> {
        let mut wanted = Vec::new();
        for &(s, e) in &self.touched {
            for r in kernel.regions().overlapping(s, e).filter(|r| r.inode != 0) {
                let file = (r.dev, r.inode);
                let Some(known) = self.pfns.get(&file) else {
                    continue;
                };
                let (from, to) = (s.max(r.start), e.min(r.end));
                if from >= to {
                    continue;
                }
                let first = r.offset / PAGE;
                let index = |addr: u64| first + (addr - r.start) / PAGE;
                for (&i, _) in known.range(index(from)..index(to)) {
                    wanted.push(Wanted {
                        addr: r.start + (i - first) * PAGE,
                        file,
                        index: i,
                    });
                }
            }
        }
        for (&file, indices) in &self.recorded {
            for r in kernel.of_file(file) {
                let first = r.offset / PAGE;
                let pages = (r.end - r.start) / PAGE;
                for &i in indices.range(first..first.saturating_add(pages)) {
                    wanted.push(Wanted {
                        addr: r.start + (i - first) * PAGE,
                        file,
                        index: i,
                    });
                }
            }
        }
        if !wanted.is_sorted_by_key(|w| w.addr) {
            wanted.sort_unstable_by_key(|w| w.addr);
        }
        wanted.dedup_by_key(|w| w.addr);
        wanted
    }
}

/// What one check found: the PFN differences, and the pages read that were not present
/// file pages, as runs of addresses (in address order within each part of the check).
#[derive(Default)]
struct Pass {
    differences: Vec<Difference>,
    unsettled: Vec<(u64, u64)>,
}

impl Pass {
    fn unsettle(&mut self, addr: u64) {
        match self.unsettled.last_mut() {
            Some(run) if run.1 == addr => run.1 += PAGE,
            _ => self.unsettled.push((addr, addr + PAGE)),
        }
    }
}

/// `items` (in address order) in groups read by one pread each: a group ends where the
/// next item starts more than [`MERGE_GAP`] pages after the group's end (reading the gap
/// costs less than another pread). `span`: an item's [start, end) addresses. Yields
/// each group with the [start, end) its pread covers.
fn pread_groups<'a, T>(
    items: &'a [T],
    span: impl Fn(&T) -> (u64, u64) + 'a,
) -> impl Iterator<Item = (&'a [T], u64, u64)> + 'a {
    let mut rest = items;
    std::iter::from_fn(move || {
        let (start, mut end) = span(rest.first()?);
        let mut n = 1;
        while let Some((s, e)) = rest.get(n).map(&span) {
            if s.saturating_sub(end) > MERGE_GAP * PAGE {
                break;
            }
            end = end.max(e);
            n += 1;
        }
        let (group, tail) = rest.split_at(n);
        rest = tail;
        Some((group, start, end))
    })
}

/// pagemap's bits for a present page (63) that is a file page or shared anonymous (61).
const PRESENT_FILE: u64 = (1 << 63) | (1 << 61);

/// Runs of pages sorted and joined where they touch or overlap.
fn merge_runs(mut runs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    if !runs.is_sorted() {
        runs.sort_unstable();
    }
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (s, e) in runs {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `runs` (sorted, disjoint) without the pages of `read` (in address order).
fn without_pages(runs: &[(u64, u64)], read: &[Wanted]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(runs.len());
    let mut read = read.iter().map(|w| w.addr).peekable();
    for &(mut s, e) in runs {
        while read.next_if(|&a| a < s).is_some() {}
        while let Some(a) = read.next_if(|&a| a < e) {
            if s < a {
                out.push((s, a));
            }
            s = a + PAGE;
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// One pread's pagemap entries, as read (native-endian u64s).
struct Entries<'a>(&'a [u8]);

impl Entries<'_> {
    fn at(&self, i: u64) -> u64 {
        let i = i as usize * 8;
        u64::from_ne_bytes(self.0[i..i + 8].try_into().expect("8 bytes"))
    }
}

/// Compares one known page with its pagemap entry: a present file page must hold the
/// known PFN (a difference is reported, then the kernel's PFN adopted so the next report
/// is new); anything else is unsettled.
fn compare(raw: u64, w: Wanted, known: &mut u64, stats: &mut PageStats, pass: &mut Pass) {
    let PageInfo::MemoryPage(flags) = PageInfo::parse_info(raw) else {
        pass.unsettle(w.addr); // swapped out: may come back
        return;
    };
    // Not present, or a private copy (copy-on-write): not a page-cache page now.
    if !flags.contains(MemoryPageFlags::PRESENT) || !flags.contains(MemoryPageFlags::FILE) {
        pass.unsettle(w.addr);
        return;
    }
    stats.checked += 1;
    let found = flags.get_page_frame_number().0;
    if *known & CHECKED == 0 {
        stats.pages += 1;
    }
    let expected = *known & !CHECKED;
    if expected != found {
        pass.differences.push(Difference {
            start: w.addr,
            end: w.addr + PAGE,
            field: Field::Pfn,
            expected: format!("{expected:#x}"),
            found: format!("{found:#x}"),
        });
    }
    *known = found | CHECKED;
}

/// The pagemap entries of [start, end), in one pread into `buffer` (kept between reads:
/// a full pass makes thousands).
fn read_pagemap<'b>(
    pagemap: &mut Option<(u32, File)>,
    stats: &mut PageStats,
    buffer: &'b mut Vec<u8>,
    pid: u32,
    start: u64,
    end: u64,
) -> Result<Entries<'b>> {
    let file = match pagemap {
        Some((_, file)) => file,
        None => {
            &mut pagemap
                .insert((
                    pid,
                    File::open(format!("/proc/{pid}/pagemap"))
                        .with_context(|| format!("opening /proc/{pid}/pagemap"))?,
                ))
                .1
        }
    };
    let count = ((end - start) / PAGE) as usize;
    buffer.resize(count * 8, 0);
    let bytes = &mut buffer[..count * 8];
    file.read_exact_at(bytes, start / PAGE * 8)
        .with_context(|| format!("reading /proc/{pid}/pagemap at {start:#x}"))?;
    stats.reads += 1;
    stats.entries += count as u64;
    Ok(Entries(bytes))
}

#[cfg(test)]
mod tests {
    //! Real pages of this test process: a file mapped shared, its PFNs as pagemap shows
    //! them fed in as page_cache events. Needs root (pagemap hides PFNs from others).

    use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};

    use mmap_trace_common::{EventHeader, EventKind, PageCacheEvent, Probe, TASK_COMM_LEN};

    use super::*;

    /// Larger than the kernel's fault-around window (16 pages), so that a fault in one
    /// part leaves another not present.
    const PAGES: u64 = 64;

    #[test]
    fn pread_groups_join_neighbours_within_the_gap() {
        let p = |n: u64| n * PAGE;
        // Touching, then MERGE_GAP pages apart (joined), then one page more (cut).
        let runs = [
            (p(0), p(2)),
            (p(2), p(3)),
            (p(3 + MERGE_GAP), p(4 + MERGE_GAP)),
            (p(5 + 2 * MERGE_GAP), p(6 + 2 * MERGE_GAP)),
        ];
        let groups: Vec<(usize, u64, u64)> = pread_groups(&runs, |&r| r)
            .map(|(g, s, e)| (g.len(), s, e))
            .collect();
        assert_eq!(
            groups,
            [
                (3, p(0), p(4 + MERGE_GAP)),
                (1, p(5 + 2 * MERGE_GAP), p(6 + 2 * MERGE_GAP))
            ]
        );
        assert_eq!(pread_groups(&runs[..0], |&r| r).count(), 0);
    }

    struct Mapped {
        addr: u64,
        file: File,
        path: std::path::PathBuf,
    }

    impl Drop for Mapped {
        fn drop(&mut self) {
            // SAFETY: unmapping our own mapping.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, (PAGES * PAGE) as usize) };
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn map_file(name: &str) -> Mapped {
        assert_eq!(
            // SAFETY: no preconditions.
            unsafe { libc::geteuid() },
            0,
            "these tests read PFNs from pagemap: run them as root"
        );
        let path =
            std::env::temp_dir().join(format!("mmap-trace-pages-{name}-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; (PAGES * PAGE) as usize]).unwrap();
        let file = File::open(&path).unwrap();
        // SAFETY: a fresh shared read-only mapping of a file we own.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (PAGES * PAGE) as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        Mapped {
            addr: addr as u64,
            file,
            path,
        }
    }

    fn touch(m: &Mapped, page: u64) {
        // SAFETY: reading inside the mapping.
        unsafe { std::ptr::read_volatile((m.addr + page * PAGE) as *const u8) };
    }

    fn kernel() -> KernelView {
        KernelView::whole(
            &crate::space::maps::read(std::process::id())
                .unwrap()
                .regions,
        )
    }

    fn page_cache_event(m: &Mapped, index: u64, pfn: u64) -> Event {
        let meta = m.file.metadata().unwrap();
        let dev = (libc::major(meta.dev()) << 20) | libc::minor(meta.dev());
        let header = EventHeader {
            kind: EventKind::PageCache as u32,
            probe: Probe::PageCache as u32,
            pid: std::process::id(),
            tid: std::process::id(),
            ts_ns: 0,
            comm: [0; TASK_COMM_LEN],
            cgroup_id: 0,
        };
        Event::PageCache(PageCacheEvent {
            header,
            pfn,
            ino: meta.ino(),
            index,
            dev,
            order: 0,
        })
    }

    /// Incremental checks whose periodic full pass never falls due during the test.
    fn incremental(plant: bool) -> PageChecks {
        let mut checks = PageChecks::new(false, plant);
        checks.full_interval = Duration::from_secs(3600);
        checks
    }

    #[test]
    fn only_pages_that_could_have_changed_are_read_again() {
        let m = map_file("incremental");
        let pid = std::process::id();
        for p in 0..PAGES {
            touch(&m, p);
        }
        let mut checks = incremental(false);
        for p in 0..PAGES {
            checks.record(&page_cache_event(&m, p, pfn_at(m.addr, p)));
        }
        // First check: full, every page agrees.
        assert!(checks.check(pid, &kernel(), false).unwrap().is_empty());
        assert_eq!((checks.stats.checked, checks.stats.full_passes), (PAGES, 1));
        // Nothing changed: nothing read.
        assert!(checks.check(pid, &kernel(), false).unwrap().is_empty());
        assert_eq!((checks.stats.checked, checks.stats.reads), (PAGES, 1));
        // Page 3 re-added to the page cache with another PFN: read again, and wrong.
        let real = pfn_at(m.addr, 3);
        checks.record(&page_cache_event(&m, 3, real + 1));
        let diffs = checks.check(pid, &kernel(), false).unwrap();
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert_eq!(
            (diffs[0].start, diffs[0].field),
            (m.addr + 3 * PAGE, Field::Pfn)
        );
        assert_eq!(
            (diffs[0].expected.as_str(), diffs[0].found.as_str()),
            (
                format!("{:#x}", real + 1).as_str(),
                format!("{real:#x}").as_str()
            )
        );
        assert_eq!(checks.stats.checked, PAGES + 1);
        // Reported once: the kernel's PFN is adopted.
        assert!(checks.check(pid, &kernel(), false).unwrap().is_empty());
        assert_eq!(checks.stats.checked, PAGES + 1);
        // A touched range is read again, in one pread.
        let reads = checks.stats.reads;
        checks.touch_range(m.addr + PAGE, m.addr + 3 * PAGE);
        assert!(checks.check(pid, &kernel(), false).unwrap().is_empty());
        assert_eq!(
            (checks.stats.checked, checks.stats.reads),
            (PAGES + 3, reads + 1)
        );
        // touch_all: a full pass.
        checks.touch_all();
        assert!(checks.check(pid, &kernel(), false).unwrap().is_empty());
        assert_eq!(
            (checks.stats.checked, checks.stats.full_passes),
            (2 * PAGES + 3, 2)
        );
        // --full: every page every time.
        let mut full = PageChecks::new(true, false);
        for p in 0..PAGES {
            full.record(&page_cache_event(&m, p, pfn_at(m.addr, p)));
        }
        for _ in 0..3 {
            assert!(full.check(pid, &kernel(), false).unwrap().is_empty());
        }
        assert_eq!((full.stats.checked, full.stats.full_passes), (3 * PAGES, 3));
    }

    #[test]
    fn a_planted_wrong_pfn_is_caught_incrementally() {
        let m = map_file("planted");
        let pid = std::process::id();
        for p in 0..PAGES {
            touch(&m, p);
        }
        let mut checks = incremental(true);
        // The first check is full; the events of later checkpoints are checked as they come.
        checks.record(&page_cache_event(&m, 0, pfn_at(m.addr, 0)));
        assert_eq!(checks.check(pid, &kernel(), false).unwrap().len(), 1);
        for p in 1..PAGES {
            checks.record(&page_cache_event(&m, p, pfn_at(m.addr, p)));
            let diffs = checks.check(pid, &kernel(), false).unwrap();
            assert_eq!(diffs.len(), 1, "page {p}: {diffs:?}");
            assert_eq!(diffs[0].start, m.addr + p * PAGE);
        }
        assert_eq!((checks.stats.checked, checks.stats.full_passes), (PAGES, 1));
    }

    #[test]
    fn a_page_faulted_in_without_an_event_is_checked_at_the_next_checkpoint() {
        let m = map_file("fault");
        let pid = std::process::id();
        // The file's pages are cached and mapped present elsewhere; here only page 0.
        let other = map_file_again(&m);
        let mut checks = incremental(false);
        for p in 0..PAGES {
            // SAFETY: reading inside the second mapping.
            unsafe { std::ptr::read_volatile((other + p * PAGE) as *const u8) };
            checks.record(&page_cache_event(&m, p, pfn_at(other, p)));
        }
        touch(&m, 0);
        assert!(checks.check(pid, &kernel(), false).unwrap().is_empty());
        let present_before = present(m.addr);
        assert_eq!(checks.stats.checked, PAGES + present_before);
        assert!(
            present_before < PAGES / 2,
            "fault-around mapped {present_before} pages"
        );
        // The PFN the events gave for page 40 is now wrong (as if the kernel had mapped
        // another page), with no event saying so; then page 40 faults in.
        let file = (
            crate::space::maps::read(pid)
                .unwrap()
                .regions
                .into_iter()
                .find(|r| r.start == m.addr)
                .unwrap()
                .dev,
            m.file.metadata().unwrap().ino(),
        );
        let real = pfn_at(other, 40);
        checks.pfns.get_mut(&file).unwrap().insert(40, real + 1);
        touch(&m, 40);
        let diffs = checks.check(pid, &kernel(), false).unwrap();
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert_eq!(diffs[0].start, m.addr + 40 * PAGE);
        // Exactly the pages that faulted in (40 and its fault-around neighbours) are new.
        assert_eq!(checks.stats.checked, PAGES + present(m.addr));
        // SAFETY: unmapping the second mapping.
        unsafe { libc::munmap(other as *mut libc::c_void, (PAGES * PAGE) as usize) };
    }
    #[test]
    fn a_private_copy_dropped_by_madvise_is_checked_when_the_file_page_returns() {
        let m = map_file("private");
        let pid = std::process::id();
        touch(&m, 0);
        let mut checks = incremental(false);
        checks.record(&page_cache_event(&m, 0, pfn_at(m.addr, 0)));
        // A private writable mapping of the same file; its page 0 is copied on write.
        // SAFETY: a fresh private mapping of a file we own.
        let private = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                m.file.as_raw_fd(),
                0,
            )
        } as u64;
        // SAFETY: writing inside the private mapping just made.
        unsafe { std::ptr::write_volatile(private as *mut u8, 1) };
        assert!(checks.check(pid, &kernel(), false).unwrap().is_empty());
        assert_eq!(checks.stats.checked, 1, "the copy is not a file page");
        // Drop the copy (a call verify does not trace): the next read maps the file page.
        // SAFETY: our own private mapping.
        assert_eq!(
            // SAFETY: our own private mapping.
            unsafe {
                libc::madvise(
                    private as *mut libc::c_void,
                    PAGE as usize,
                    libc::MADV_DONTNEED,
                )
            },
            0
        );
        // SAFETY: reading inside the private mapping.
        unsafe { std::ptr::read_volatile(private as *const u8) };
        let file = (
            crate::space::maps::read(pid)
                .unwrap()
                .regions
                .into_iter()
                .find(|r| r.start == m.addr)
                .unwrap()
                .dev,
            m.file.metadata().unwrap().ino(),
        );
        let real = pfn_at(m.addr, 0);
        checks.pfns.get_mut(&file).unwrap().insert(0, real + 1);
        let diffs = checks.check(pid, &kernel(), false).unwrap();
        assert_eq!(
            diffs.iter().map(|d| d.start).collect::<Vec<_>>(),
            [private],
            "{diffs:?}"
        );
        // SAFETY: unmapping the private mapping.
        unsafe { libc::munmap(private as *mut libc::c_void, PAGE as usize) };
    }

    fn map_file_again(m: &Mapped) -> u64 {
        // SAFETY: a second shared read-only mapping of the same file.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (PAGES * PAGE) as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                m.file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        addr as u64
    }

    /// Present pages of a mapping of PAGES pages.
    fn present(addr: u64) -> u64 {
        let f = File::open("/proc/self/pagemap").unwrap();
        let mut b = vec![0u8; PAGES as usize * 8];
        f.read_exact_at(&mut b, addr / PAGE * 8).unwrap();
        b.chunks_exact(8)
            .filter(|e| u64::from_ne_bytes((*e).try_into().unwrap()) & (1 << 63) != 0)
            .count() as u64
    }

    fn pfn_at(addr: u64, page: u64) -> u64 {
        let f = File::open("/proc/self/pagemap").unwrap();
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, (addr / PAGE + page) * 8).unwrap();
        let PageInfo::MemoryPage(flags) = PageInfo::parse_info(u64::from_ne_bytes(b)) else {
            panic!("swapped")
        };
        assert!(
            flags.contains(MemoryPageFlags::PRESENT),
            "page {page} at {addr:#x} not present"
        );
        flags.get_page_frame_number().0
    }
}
