//! Replaying a trace into per-process address-space timelines.
//!
//! Each process has a set of live VMAs, keyed by start address. A traced call changes part
//! of that set at its time: the VMAs it touches are split at the call's range (the split
//! is retroactive: both pieces keep their start time and history), the pieces inside the
//! range end there, and what the call made of them begins. A [`Vma`] is therefore one
//! rectangle of the picture: an address range with constant attributes over a time span.
//!
//! Kernel-probe events (`mmap_region`, `remap_pfn_range`, `driver_mmap`) fire inside a
//! syscall and reach the trace before the syscall's own event. They wait per thread and
//! annotate the mapping of that thread's next `mmap`; any other event of the thread (an
//! exec's ELF loader maps with `mmap_region` but no `mmap`) applies them on their own.

use std::collections::{BTreeMap, HashMap};

use super::input::{Call, Event, Trace, VmaInfo};

pub const PAGE: u64 = 4096;

const MAP_ANONYMOUS: u64 = 0x20;
const MAP_GROWSDOWN: u64 = 0x100;
const MAP_STACK: u64 = 0x20000;
const MREMAP_DONTUNMAP: u64 = 4;
const VM_GROWSDOWN: u64 = 0x100;
const VM_PFNMAP: u64 = 0x400;
const VM_IO: u64 = 0x4000;
const VM_MIXEDMAP: u64 = 0x1000_0000;
/// PROT_READ|WRITE|EXEC, the same bits in vm_flags.
const PROT_RWX: u64 = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Anon,
    File,
    Device,
    Heap,
    Stack,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Anon, Kind::File, Kind::Device, Kind::Heap, Kind::Stack];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Anon => "anon",
            Kind::File => "file",
            Kind::Device => "device",
            Kind::Heap => "heap",
            Kind::Stack => "stack",
        }
    }
}

/// What an event did to a VMA interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Created,
    /// Cut at the edge of a call's range; this piece itself did not change.
    Split,
    ProtChanged,
    /// A kernel probe told us more about it (vm_flags, file, PFNs).
    Annotated,
    MovedAway,
    MovedHere,
    Grown,
    Shrunk,
    Removed,
    /// A MAP_FIXED mapping (or MREMAP_FIXED target) took its place.
    Replaced,
    /// execve replaced the whole address space.
    Exec,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Created => "created",
            Role::Split => "split",
            Role::ProtChanged => "prot changed",
            Role::Annotated => "annotated",
            Role::MovedAway => "moved away",
            Role::MovedHere => "moved here",
            Role::Grown => "grown",
            Role::Shrunk => "shrunk",
            Role::Removed => "removed",
            Role::Replaced => "replaced",
            Role::Exec => "exec",
        }
    }
}

/// An event (index into [`Trace::events`]) and what it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Touch {
    pub event: usize,
    pub role: Role,
}

/// A `remap_pfn_range` into (part of) a VMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfnRange {
    pub addr: u64,
    pub pfn: u64,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Attrs {
    pub kind: Kind,
    /// PROT_READ|WRITE|EXEC bits.
    pub prot: u64,
    pub vm_flags: Option<u64>,
    pub file: Option<String>,
    pub pfns: Vec<PfnRange>,
    /// The mmtrace driver's mmap hook saw this mapping.
    pub driver: bool,
}

impl Attrs {
    pub fn new(kind: Kind, prot: u64) -> Self {
        Self { kind, prot: prot & PROT_RWX, vm_flags: None, file: None, pfns: Vec::new(), driver: false }
    }

    fn with_file(mut self, file: Option<String>) -> Self {
        self.file = file;
        self
    }

    /// What vm_flags (from a kernel probe) say about the mapping.
    fn learn_vm_flags(&mut self, vm_flags: u64) {
        self.vm_flags = Some(vm_flags);
        self.prot = vm_flags & PROT_RWX;
        if vm_flags & (VM_PFNMAP | VM_IO | VM_MIXEDMAP) != 0 {
            self.kind = Kind::Device;
        } else if vm_flags & VM_GROWSDOWN != 0 && self.kind == Kind::Anon {
            self.kind = Kind::Stack;
        }
    }
}

/// One rectangle: `[start, end)` with constant attributes over `[t_start, t_end)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub t_start: u64,
    /// `None`: still mapped when the trace ended.
    pub t_end: Option<u64>,
    pub attrs: Attrs,
    /// Oldest first, inherited through splits, prot changes and moves; the first (what
    /// made the mapping) and the latest [`HISTORY`] - 1 are kept.
    pub touches: Vec<Touch>,
    /// Touches dropped from the middle of a long history.
    pub elided: usize,
}

/// How many touches a VMA's history keeps: a region split or re-protected thousands of
/// times must not carry thousands of events into every piece.
pub const HISTORY: usize = 24;

impl Vma {
    fn remember(&mut self, touch: Touch) {
        self.touches.push(touch);
        if self.touches.len() > HISTORY {
            self.touches.remove(1);
            self.elided += 1;
        }
    }
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// One process's timeline.
#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    /// The last command name seen (it changes at exec).
    pub comm: String,
    pub first_ts: u64,
    pub last_ts: u64,
    /// Indices into [`Trace::events`], in trace order.
    pub events: Vec<usize>,
    /// Every interval, ended ones first in the order they ended, then the live ones by
    /// address.
    pub vmas: Vec<Vma>,
    /// Bytes that became mapped (created or grown) and that stopped being mapped (removed,
    /// shrunk, replaced by a fixed mapping); moves and exec count as neither.
    pub mapped_bytes: u64,
    pub unmapped_bytes: u64,
}

/// Replays the trace; processes in order of their first event.
pub fn replay(trace: &Trace) -> Vec<Process> {
    let mut order: Vec<u32> = Vec::new();
    let mut spaces: HashMap<u32, (Process, Space)> = HashMap::new();
    for (i, e) in trace.events.iter().enumerate() {
        let (process, space) = spaces.entry(e.pid).or_insert_with(|| {
            order.push(e.pid);
            let p = Process {
                pid: e.pid,
                comm: e.comm.clone(),
                first_ts: e.ts_ns,
                last_ts: e.ts_ns,
                events: Vec::new(),
                vmas: Vec::new(),
                mapped_bytes: 0,
                unmapped_bytes: 0,
            };
            (p, Space::default())
        });
        process.events.push(i);
        process.comm.clone_from(&e.comm);
        process.first_ts = process.first_ts.min(e.ts_ns);
        process.last_ts = process.last_ts.max(e.ts_ns);
        space.apply(&trace.events, i);
    }
    order
        .into_iter()
        .map(|pid| {
            let (mut process, mut space) = spaces.remove(&pid).expect("every pid has a space");
            process.vmas = space.finish(&trace.events);
            (process.mapped_bytes, process.unmapped_bytes) = (space.mapped, space.unmapped);
            process
        })
        .collect()
}

pub fn page_up(x: u64) -> u64 {
    x.saturating_add(PAGE - 1) & !(PAGE - 1)
}

pub fn page_down(x: u64) -> u64 {
    x & !(PAGE - 1)
}

/// `[addr, addr + len)` widened to whole pages.
fn pages(addr: u64, len: u64) -> (u64, u64) {
    (page_down(addr), page_up(addr.saturating_add(len)))
}

#[derive(Default)]
struct Space {
    live: BTreeMap<u64, Vma>,
    done: Vec<Vma>,
    /// `(start_brk, brk)` once a brk call showed them.
    heap: Option<(u64, u64)>,
    /// Kernel-probe events waiting for their thread's syscall, by tid.
    pending: HashMap<u32, Vec<usize>>,
    /// Times never run backwards within a process (events from several CPUs may arrive
    /// slightly out of order).
    clock: u64,
    mapped: u64,
    unmapped: u64,
}

impl Space {
    fn apply(&mut self, events: &[Event], i: usize) {
        let e = &events[i];
        self.clock = self.clock.max(e.ts_ns);
        let t = self.clock;
        match &e.call {
            Call::MmapRegion { .. } | Call::RemapPfnRange { .. } | Call::DriverMmap { .. } => {
                self.pending.entry(e.tid).or_default().push(i);
            }
            Call::Mmap { len, prot, flags, path, ret } => {
                let waiting = self.pending.remove(&e.tid).unwrap_or_default();
                if let (Some(ret), None) = (ret, &e.error) {
                    let (start, end) = pages(*ret, *len);
                    self.map(start, end, t, i, mmap_attrs(*prot, *flags, path.clone()), Role::Created);
                    for w in waiting {
                        self.kernel_event(events, w, t, true);
                    }
                }
            }
            Call::Exec => {
                self.for_each_in(0, u64::MAX, |_| true, t, i, Role::Exec, |_| None);
                self.heap = None;
                self.flush_thread(events, e.tid, t);
            }
            _ => {
                self.flush_thread(events, e.tid, t);
                if !e.refused() {
                    self.syscall(&e.call, t, i);
                }
            }
        }
    }

    fn syscall(&mut self, call: &Call, t: u64, i: usize) {
        match *call {
            Call::Munmap { addr, len } => {
                let (start, end) = pages(addr, len);
                self.unmap(start, end, t, i, Role::Removed);
            }
            Call::Mprotect { addr, len, prot } => {
                let (start, end) = pages(addr, len);
                let prot = prot & PROT_RWX;
                self.for_each_in(
                    start,
                    end,
                    |a| a.prot != prot,
                    t,
                    i,
                    Role::ProtChanged,
                    |a| Some(Attrs { prot, ..a.clone() }),
                );
            }
            Call::Mremap { old_addr, old_len, new_len, flags, ret: Some(new_addr) } => {
                self.mremap(old_addr, page_up(old_len), page_up(new_len), flags, new_addr, t, i);
            }
            Call::Brk { addr, ret } => self.brk(addr, ret, t, i),
            _ => {}
        }
    }

    /// Applies the waiting kernel-probe events of a thread on their own.
    fn flush_thread(&mut self, events: &[Event], tid: u32, t: u64) {
        for w in self.pending.remove(&tid).unwrap_or_default() {
            self.kernel_event(events, w, t, false);
        }
    }

    /// `in_mmap`: the event came with the mmap that just created its range; otherwise it
    /// stands alone (and creates what it describes where nothing is mapped).
    fn kernel_event(&mut self, events: &[Event], i: usize, t: u64, in_mmap: bool) {
        let e = &events[i];
        if e.refused() {
            return;
        }
        match &e.call {
            Call::MmapRegion { len, vm_flags, file, ret: Some(addr) } => {
                let (start, end) = pages(*addr, *len);
                if in_mmap {
                    self.annotate(start, end, t, i, |a| {
                        // mmap_region reports the flags it was asked for; a driver's mmap
                        // may add to them (VM_IO|VM_PFNMAP), and its event says so.
                        if !a.driver {
                            a.learn_vm_flags(*vm_flags);
                        }
                        if file.is_some() {
                            a.file.clone_from(file);
                        }
                    });
                } else {
                    let mut attrs =
                        Attrs::new(if file.is_some() { Kind::File } else { Kind::Anon }, 0).with_file(file.clone());
                    attrs.learn_vm_flags(*vm_flags);
                    self.map(start, end, t, i, attrs, Role::Created);
                }
            }
            Call::RemapPfnRange { vma, addr, pfn, size } => {
                let (start, end) = pages(*addr, *size);
                let range = PfnRange { addr: *addr, pfn: *pfn, size: *size };
                self.ensure(vma, t, i);
                self.annotate(start, end, t, i, |a| {
                    a.kind = Kind::Device;
                    a.pfns.push(range);
                });
            }
            Call::DriverMmap { after } => {
                self.ensure(after, t, i);
                self.annotate(after.start, after.end, t, i, |a| {
                    a.learn_vm_flags(after.flags_raw);
                    a.kind = Kind::Device;
                    a.driver = true;
                    if after.file.is_some() {
                        a.file.clone_from(&after.file);
                    }
                });
            }
            _ => {}
        }
    }

    /// Creates the parts of a probe-reported VMA that the model does not have.
    fn ensure(&mut self, vma: &VmaInfo, t: u64, i: usize) {
        let mut attrs = Attrs::new(Kind::Device, 0).with_file(vma.file.clone());
        attrs.learn_vm_flags(vma.flags_raw);
        attrs.kind = Kind::Device;
        self.fill_gaps(page_down(vma.start), page_up(vma.end), t, i, &attrs, Role::Created);
    }

    fn map(&mut self, start: u64, end: u64, t: u64, i: usize, attrs: Attrs, role: Role) {
        self.unmap(start, end, t, i, Role::Replaced);
        self.insert(start, end, t, attrs, Touch { event: i, role });
    }

    fn unmap(&mut self, start: u64, end: u64, t: u64, i: usize, role: Role) {
        self.for_each_in(start, end, |_| true, t, i, role, |_| None);
    }

    fn insert(&mut self, start: u64, end: u64, t: u64, attrs: Attrs, touch: Touch) {
        self.insert_vma(Vma { start, end, t_start: t, t_end: None, attrs, touches: vec![touch], elided: 0 });
    }

    fn insert_vma(&mut self, vma: Vma) {
        if vma.start < vma.end {
            if matches!(vma.touches.last(), Some(Touch { role: Role::Created | Role::Grown, .. })) {
                self.mapped += vma.len();
            }
            self.live.insert(vma.start, vma);
        }
    }

    /// Cuts the live VMA containing `addr` (strictly inside it) in two.
    fn split_at(&mut self, addr: u64, i: usize) {
        let Some((_, vma)) = self.live.range_mut(..addr).next_back() else { return };
        if vma.end <= addr {
            return;
        }
        let mut upper = vma.clone();
        vma.end = addr;
        upper.start = addr;
        let split = Touch { event: i, role: Role::Split };
        // One call may cut a VMA at both ends of its range: one `split` is enough.
        if vma.touches.last() != Some(&split) {
            vma.remember(split);
            upper.remember(split);
        }
        self.live.insert(addr, upper);
    }

    /// Starts of the live VMAs overlapping `[start, end)`.
    fn overlapping(&self, start: u64, end: u64) -> Vec<u64> {
        let first = self.live.range(..=start).next_back().filter(|(_, v)| v.end > start).map(|(k, _)| *k);
        first.into_iter().chain(self.live.range(start..end).map(|(k, _)| *k).filter(|k| Some(*k) != first)).collect()
    }

    /// For each live VMA overlapping `[start, end)` that `wanted` selects: the part inside
    /// the range ends at `t` with `role`; `successor` gives the attributes of what replaces
    /// it from `t` on (`None`: nothing does).
    #[allow(clippy::too_many_arguments)]
    fn for_each_in(
        &mut self,
        start: u64,
        end: u64,
        wanted: impl Fn(&Attrs) -> bool,
        t: u64,
        i: usize,
        role: Role,
        successor: impl Fn(&Attrs) -> Option<Attrs>,
    ) {
        let keys: Vec<u64> = self.overlapping(start, end).into_iter().filter(|k| wanted(&self.live[k].attrs)).collect();
        for key in keys {
            let (vstart, vend) = (key, self.live[&key].end);
            if vstart < start {
                self.split_at(start, i);
            }
            if vend > end {
                self.split_at(end, i);
            }
            let mut old = self.live.remove(&vstart.max(start)).expect("the piece inside the range");
            old.remember(Touch { event: i, role });
            if let Some(attrs) = successor(&old.attrs) {
                self.insert_vma(Vma { t_start: t, attrs, ..old.clone() });
            } else if matches!(role, Role::Removed | Role::Shrunk | Role::Replaced) {
                self.unmapped += old.len();
            }
            old.t_end = Some(t);
            self.done.push(old);
        }
    }

    /// Changes attributes in place (no new interval): kernel probes describe the mapping
    /// their syscall is creating, so what they say was true from its start.
    fn annotate(&mut self, start: u64, end: u64, _t: u64, i: usize, change: impl Fn(&mut Attrs)) {
        for key in self.overlapping(start, end) {
            if key < start {
                self.split_at(start, i);
            }
            if self.live[&key.max(start)].end > end {
                self.split_at(end, i);
            }
            let vma = self.live.get_mut(&key.max(start)).expect("the piece inside the range");
            change(&mut vma.attrs);
            vma.remember(Touch { event: i, role: Role::Annotated });
        }
    }

    /// Creates `attrs` VMAs in the unmapped parts of `[start, end)`.
    fn fill_gaps(&mut self, start: u64, end: u64, t: u64, i: usize, attrs: &Attrs, role: Role) {
        let mut cursor = start;
        let covered: Vec<(u64, u64)> = self.overlapping(start, end).iter().map(|k| (*k, self.live[k].end)).collect();
        let mut gaps = Vec::new();
        for (s, e) in covered {
            if s > cursor {
                gaps.push((cursor, s));
            }
            cursor = cursor.max(e);
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        for (s, e) in gaps {
            self.insert(s, e, t, attrs.clone(), Touch { event: i, role });
        }
    }

    /// `old_len`/`new_len` already page-aligned.
    #[allow(clippy::too_many_arguments)]
    fn mremap(&mut self, old: u64, old_len: u64, new_len: u64, flags: u64, new: u64, t: u64, i: usize) {
        let fallback = Attrs::new(Kind::Anon, 3);
        let end = |base: u64, len: u64| base.saturating_add(len);
        if new == old && old_len > 0 {
            if new_len < old_len {
                self.unmap(end(old, new_len), end(old, old_len), t, i, Role::Shrunk);
            } else if new_len > old_len {
                let attrs = self.attrs_at(end(old, old_len) - 1).unwrap_or(fallback);
                self.map(end(old, old_len), end(old, new_len), t, i, attrs, Role::Grown);
            }
            return;
        }
        // old_len 0 duplicates a shared mapping; MREMAP_DONTUNMAP leaves the old range
        // mapped (emptied). Either way the source stays.
        let keep_source = old_len == 0 || flags & MREMAP_DONTUNMAP != 0;
        let source_len = if old_len == 0 { new_len } else { old_len };
        let moved: Vec<Vma> =
            self.overlapping(old, end(old, source_len)).iter().map(|k| self.live[k].clone()).collect();
        if !keep_source {
            self.unmap(old, end(old, source_len), t, i, Role::MovedAway);
        }
        self.unmap(new, end(new, new_len), t, i, Role::Replaced);
        let mut last = fallback;
        for mut vma in moved {
            let from = vma.start.max(old) - old;
            let to = (vma.end.min(end(old, source_len)) - old).min(new_len);
            vma.remember(Touch { event: i, role: Role::MovedHere });
            last = vma.attrs.clone();
            if from < to {
                self.insert_vma(Vma { start: end(new, from), end: end(new, to), t_start: t, t_end: None, ..vma });
            }
        }
        if new_len > source_len {
            self.fill_gaps(end(new, source_len), end(new, new_len), t, i, &last, Role::Grown);
        }
        // A source the model never saw still arrives somewhere.
        self.fill_gaps(new, end(new, new_len.min(source_len)), t, i, &last, Role::MovedHere);
    }

    fn attrs_at(&self, addr: u64) -> Option<Attrs> {
        self.live.range(..=addr).next_back().filter(|(_, v)| v.end > addr).map(|(_, v)| v.attrs.clone())
    }

    /// The heap is `[start_brk, page_up(brk))`; growth adds an interval above the old
    /// break, shrinking removes the top.
    fn brk(&mut self, addr: u64, ret: u64, t: u64, i: usize) {
        let Some((start, brk)) = self.heap.filter(|&(_, brk)| addr != 0 || ret == brk) else {
            // The first brk (normally brk(0)) shows where the heap starts; a brk(0) that
            // answers another break means a new program (an exec the trace did not show)
            // or lost events: start over from there.
            self.heap = Some((ret, ret));
            return;
        };
        let (old_top, new_top) = (page_up(brk.max(start)), page_up(ret.max(start)));
        if new_top > old_top {
            self.map(old_top, new_top, t, i, Attrs::new(Kind::Heap, 3), Role::Grown);
        } else if new_top < old_top {
            self.unmap(new_top, old_top, t, i, Role::Shrunk);
        }
        self.heap = Some((start, ret));
    }

    fn finish(&mut self, events: &[Event]) -> Vec<Vma> {
        let tids: Vec<u32> = self.pending.keys().copied().collect();
        for tid in tids {
            let t = self.clock;
            self.flush_thread(events, tid, t);
        }
        let mut all = std::mem::take(&mut self.done);
        all.extend(std::mem::take(&mut self.live).into_values());
        all
    }
}

fn mmap_attrs(prot: u64, flags: u64, path: Option<String>) -> Attrs {
    let kind = if flags & MAP_ANONYMOUS != 0 {
        if flags & (MAP_GROWSDOWN | MAP_STACK) != 0 { Kind::Stack } else { Kind::Anon }
    } else {
        match path.as_deref() {
            Some(p) if p.starts_with("/dev/") && p != "/dev/zero" && !p.starts_with("/dev/shm/") => Kind::Device,
            _ => Kind::File,
        }
    };
    Attrs::new(kind, prot).with_file(path)
}

/// `rw-`, `r-x`, `---`.
pub fn prot_string(prot: u64) -> String {
    [(1, 'r'), (2, 'w'), (4, 'x')].iter().map(|&(bit, c)| if prot & bit != 0 { c } else { '-' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000;

    /// A tiny trace builder: each call is one event of pid 1 / tid 1, 10 ns apart.
    struct Calls(Vec<Event>);

    impl Calls {
        fn new() -> Self {
            Self(Vec::new())
        }

        fn push_as(mut self, tid: u32, call: Call, error: Option<&str>) -> Self {
            let ts_ns = T0 + 10 * self.0.len() as u64;
            self.0.push(Event {
                line: self.0.len() + 1,
                ts_ns,
                pid: 1,
                tid,
                comm: "t".into(),
                probe: "test".into(),
                call,
                error: error.map(str::to_string),
                detail: String::new(),
            });
            self
        }

        fn push(self, call: Call) -> Self {
            self.push_as(1, call, None)
        }

        fn anon(self, ret: u64, len: u64, prot: u64) -> Self {
            self.push(Call::Mmap { len, prot, flags: 0x22, path: None, ret: Some(ret) })
        }

        fn file(self, ret: u64, len: u64, path: &str) -> Self {
            self.push(Call::Mmap { len, prot: 1, flags: 0x2, path: Some(path.into()), ret: Some(ret) })
        }

        fn munmap(self, addr: u64, len: u64) -> Self {
            self.push(Call::Munmap { addr, len })
        }

        fn mprotect(self, addr: u64, len: u64, prot: u64) -> Self {
            self.push(Call::Mprotect { addr, len, prot })
        }

        fn mremap(self, old_addr: u64, old_len: u64, new_len: u64, flags: u64, ret: u64) -> Self {
            self.push(Call::Mremap { old_addr, old_len, new_len, flags, ret: Some(ret) })
        }

        fn brk(self, addr: u64, ret: u64) -> Self {
            self.push(Call::Brk { addr, ret })
        }

        fn replay(self) -> Process {
            let trace = Trace { events: self.0, ..Trace::default() };
            replay(&trace).pop().expect("one process")
        }
    }

    fn ts(n: usize) -> u64 {
        T0 + 10 * n as u64
    }

    /// `(start, end, t_start, t_end, kind, prot)` of every interval, sorted.
    fn shape(p: &Process) -> Vec<(u64, u64, u64, Option<u64>, Kind, u64)> {
        let mut s: Vec<_> =
            p.vmas.iter().map(|v| (v.start, v.end, v.t_start, v.t_end, v.attrs.kind, v.attrs.prot)).collect();
        s.sort_by_key(|x| (x.0, x.2));
        s
    }

    fn live(p: &Process) -> Vec<(u64, u64)> {
        let mut l: Vec<_> = p.vmas.iter().filter(|v| v.t_end.is_none()).map(|v| (v.start, v.end)).collect();
        l.sort();
        l
    }

    fn roles(v: &Vma) -> Vec<(usize, Role)> {
        v.touches.iter().map(|t| (t.event, t.role)).collect()
    }

    const A: u64 = 0x10_0000;
    const P: u64 = PAGE;

    #[test]
    fn mmap_creates_page_rounded_vma() {
        let p = Calls::new().anon(A, 100, 3).replay();
        assert_eq!(shape(&p), vec![(A, A + P, ts(0), None, Kind::Anon, 3)]);
        assert_eq!(roles(&p.vmas[0]), vec![(0, Role::Created)]);
        assert_eq!((p.first_ts, p.last_ts), (ts(0), ts(0)));
    }

    #[test]
    fn munmap_in_the_middle_splits_retroactively() {
        let p = Calls::new().anon(A, 4 * P, 3).munmap(A + P, P).replay();
        assert_eq!(
            shape(&p),
            vec![
                (A, A + P, ts(0), None, Kind::Anon, 3),
                (A + P, A + 2 * P, ts(0), Some(ts(1)), Kind::Anon, 3),
                (A + 2 * P, A + 4 * P, ts(0), None, Kind::Anon, 3),
            ]
        );
        let removed = p.vmas.iter().find(|v| v.t_end.is_some()).unwrap();
        assert_eq!(roles(removed), vec![(0, Role::Created), (1, Role::Split), (1, Role::Removed)]);
        let high = p.vmas.iter().find(|v| v.start == A + 2 * P).unwrap();
        assert_eq!(roles(high), vec![(0, Role::Created), (1, Role::Split)]);
        let low = p.vmas.iter().find(|v| v.start == A).unwrap();
        assert_eq!(roles(low), vec![(0, Role::Created), (1, Role::Split)]);
        assert_eq!((p.mapped_bytes, p.unmapped_bytes), (4 * P, P));
    }

    #[test]
    fn munmap_across_several_vmas_and_holes() {
        let p = Calls::new()
            .anon(A, P, 3)
            .anon(A + 2 * P, 2 * P, 3)
            .anon(A + 5 * P, P, 1)
            // From inside the hole before the second to the middle of the second.
            .munmap(A + P, 2 * P)
            // Everything, holes and all.
            .munmap(0, 1 << 40)
            .replay();
        assert!(live(&p).is_empty());
        assert_eq!(
            shape(&p),
            vec![
                (A, A + P, ts(0), Some(ts(4)), Kind::Anon, 3),
                (A + 2 * P, A + 3 * P, ts(1), Some(ts(3)), Kind::Anon, 3),
                (A + 3 * P, A + 4 * P, ts(1), Some(ts(4)), Kind::Anon, 3),
                (A + 5 * P, A + 6 * P, ts(2), Some(ts(4)), Kind::Anon, 1),
            ]
        );
    }

    #[test]
    fn munmap_of_nothing_changes_nothing() {
        let p = Calls::new().anon(A, P, 3).munmap(A + 8 * P, P).replay();
        assert_eq!(shape(&p), vec![(A, A + P, ts(0), None, Kind::Anon, 3)]);
        assert_eq!(p.vmas[0].touches.len(), 1);
    }

    #[test]
    fn map_fixed_replaces_the_overlapped_range() {
        let p = Calls::new().file(A, 4 * P, "/lib/libc.so.6").anon(A + P, 2 * P, 3).replay();
        assert_eq!(
            shape(&p),
            vec![
                (A, A + P, ts(0), None, Kind::File, 1),
                (A + P, A + 3 * P, ts(0), Some(ts(1)), Kind::File, 1),
                (A + P, A + 3 * P, ts(1), None, Kind::Anon, 3),
                (A + 3 * P, A + 4 * P, ts(0), None, Kind::File, 1),
            ]
        );
        let replaced = p.vmas.iter().find(|v| v.t_end.is_some()).unwrap();
        assert_eq!(replaced.touches.last(), Some(&Touch { event: 1, role: Role::Replaced }));
        assert_eq!((p.mapped_bytes, p.unmapped_bytes), (6 * P, 2 * P));
        assert_eq!(replaced.attrs.file.as_deref(), Some("/lib/libc.so.6"));
        let new = p.vmas.iter().find(|v| v.t_start == ts(1)).unwrap();
        assert_eq!(roles(new), vec![(1, Role::Created)]);
    }

    #[test]
    fn map_fixed_over_exactly_one_vma_and_over_several() {
        let p = Calls::new().anon(A, P, 1).anon(A + P, P, 3).anon(A, 2 * P, 7).replay();
        assert_eq!(live(&p), vec![(A, A + 2 * P)]);
        assert_eq!(p.vmas.len(), 3);
        assert!(p.vmas.iter().filter(|v| v.t_end == Some(ts(2))).all(|v| v.touches.len() == 2));
    }

    #[test]
    fn mprotect_changes_prot_per_range() {
        let p = Calls::new().anon(A, 3 * P, 3).mprotect(A + P, P, 0).mprotect(A + P, P, 0).replay();
        assert_eq!(
            shape(&p),
            vec![
                (A, A + P, ts(0), None, Kind::Anon, 3),
                (A + P, A + 2 * P, ts(0), Some(ts(1)), Kind::Anon, 3),
                (A + P, A + 2 * P, ts(1), None, Kind::Anon, 0),
                (A + 2 * P, A + 3 * P, ts(0), None, Kind::Anon, 3),
            ]
        );
        // The second, identical mprotect changed nothing: no new interval.
        let guard = p.vmas.iter().find(|v| v.attrs.prot == 0).unwrap();
        assert_eq!(roles(guard), vec![(0, Role::Created), (1, Role::Split), (1, Role::ProtChanged)]);
    }

    #[test]
    fn mprotect_with_unaligned_length_covers_whole_pages() {
        let p = Calls::new().anon(A, 2 * P, 3).mprotect(A, 1, 1).replay();
        assert_eq!(live(&p), vec![(A, A + P), (A + P, A + 2 * P)]);
        let ro = p.vmas.iter().find(|v| v.attrs.prot == 1).unwrap();
        assert_eq!((ro.start, ro.end), (A, A + P));
    }

    #[test]
    fn mprotect_spanning_vmas_with_mixed_prot_only_changes_the_different_ones() {
        let p = Calls::new().anon(A, P, 1).anon(A + P, P, 3).mprotect(A, 2 * P, 1).replay();
        assert_eq!(p.vmas.len(), 3);
        assert_eq!(p.vmas.iter().filter(|v| v.t_end.is_none() && v.attrs.prot == 1).count(), 2);
    }

    #[test]
    fn mremap_move_carries_attributes_and_history() {
        let dest = 0x50_0000;
        let p = Calls::new().file(A, 2 * P, "/data").mprotect(A + P, P, 0).mremap(A, 2 * P, 3 * P, 1, dest).replay();
        assert_eq!(live(&p), vec![(dest, dest + P), (dest + P, dest + 2 * P), (dest + 2 * P, dest + 3 * P)]);
        assert!(p.vmas.iter().filter(|v| v.start < dest).all(|v| v.t_end.is_some()));
        let moved = p.vmas.iter().find(|v| v.start == dest).unwrap();
        assert_eq!(moved.attrs.file.as_deref(), Some("/data"));
        assert_eq!(moved.t_start, ts(2));
        assert_eq!(roles(moved), vec![(0, Role::Created), (1, Role::Split), (2, Role::MovedHere)]);
        let guard = p.vmas.iter().find(|v| v.start == dest + P).unwrap();
        assert_eq!(guard.attrs.prot, 0);
        let grown = p.vmas.iter().find(|v| v.start == dest + 2 * P).unwrap();
        assert_eq!((grown.attrs.prot, roles(grown)), (0, vec![(2, Role::Grown)]));
        let away = p.vmas.iter().find(|v| v.start == A && v.t_end.is_some()).unwrap();
        assert_eq!(away.touches.last().unwrap().role, Role::MovedAway);
        // The move itself maps and unmaps nothing; the growth maps a page.
        assert_eq!((p.mapped_bytes, p.unmapped_bytes), (3 * P, 0));
    }

    #[test]
    fn mremap_in_place_grow_and_shrink() {
        let p = Calls::new().anon(A, 2 * P, 3).mremap(A, 2 * P, 4 * P, 0, A).mremap(A, 4 * P, P, 0, A).replay();
        assert_eq!(live(&p), vec![(A, A + P)]);
        assert_eq!(
            shape(&p),
            vec![
                (A, A + P, ts(0), None, Kind::Anon, 3),
                (A + P, A + 2 * P, ts(0), Some(ts(2)), Kind::Anon, 3),
                (A + 2 * P, A + 4 * P, ts(1), Some(ts(2)), Kind::Anon, 3),
            ]
        );
        assert!(p.vmas.iter().filter(|v| v.t_end.is_some()).all(|v| v.touches.last().unwrap().role == Role::Shrunk));
    }

    #[test]
    fn mremap_dontunmap_keeps_the_source_and_fixed_replaces_the_target() {
        let dest = 0x50_0000;
        let p = Calls::new().anon(A, P, 3).anon(dest, P, 1).mremap(A, P, P, 1 | 2 | MREMAP_DONTUNMAP, dest).replay();
        assert_eq!(live(&p), vec![(A, A + P), (dest, dest + P)]);
        let target = p.vmas.iter().find(|v| v.start == dest && v.t_end.is_none()).unwrap();
        assert_eq!(target.attrs.prot, 3);
        let old_target = p.vmas.iter().find(|v| v.start == dest && v.t_end.is_some()).unwrap();
        assert_eq!(old_target.touches.last().unwrap().role, Role::Replaced);
    }

    #[test]
    fn mremap_of_an_unknown_source_still_maps_the_target() {
        let p = Calls::new().mremap(A, P, 2 * P, 1, 0x50_0000).replay();
        assert_eq!(live(&p), vec![(0x50_0000, 0x50_1000), (0x50_1000, 0x50_2000)]);
    }

    #[test]
    fn brk_grows_and_shrinks_the_heap() {
        let h = 0x55_0000;
        let p = Calls::new()
            .brk(0, h)
            .brk(h + 0x21000, h + 0x21000)
            .brk(h + 0x22800, h + 0x22800)
            // Shrink into the first page of the second growth.
            .brk(h + 0x21800, h + 0x21800)
            // A refused grow returns the old break: nothing changes.
            .brk(1 << 46, h + 0x21800)
            .brk(h, h)
            .replay();
        assert!(live(&p).is_empty());
        assert_eq!(
            shape(&p),
            vec![
                (h, h + 0x21000, ts(1), Some(ts(5)), Kind::Heap, 3),
                (h + 0x21000, h + 0x22000, ts(2), Some(ts(5)), Kind::Heap, 3),
                (h + 0x22000, h + 0x23000, ts(2), Some(ts(3)), Kind::Heap, 3),
            ]
        );
    }

    #[test]
    fn brk_query_answering_another_break_starts_a_new_heap() {
        let p = Calls::new()
            .brk(0, 0x55_0000)
            .brk(0x55_1000, 0x55_1000)
            // A new program's heap, far away: not a 2 GiB growth.
            .brk(0, 0xd5_0000_0000)
            .brk(0xd5_0000_2000, 0xd5_0000_2000)
            .replay();
        assert_eq!(live(&p), vec![(0x55_0000, 0x55_1000), (0xd5_0000_0000, 0xd5_0000_2000)]);
        assert_eq!(p.mapped_bytes, 3 * P);
    }

    #[test]
    fn brk_with_an_unaligned_start() {
        let h = 0x55_0010;
        let p = Calls::new().brk(0, h).brk(h + 10, h + 10).brk(h + P, h + P).replay();
        assert_eq!(live(&p), vec![(0x55_1000, 0x55_2000)]);
    }

    #[test]
    fn refused_calls_change_nothing() {
        let p = Calls::new()
            .anon(A, P, 3)
            .push_as(1, Call::Munmap { addr: A, len: P }, Some("EINVAL"))
            .push_as(1, Call::Mmap { len: P, prot: 3, flags: 0x22, path: None, ret: None }, Some("ENOMEM"))
            .replay();
        assert_eq!(shape(&p), vec![(A, A + P, ts(0), None, Kind::Anon, 3)]);
        assert_eq!(p.events.len(), 3);
    }

    #[test]
    fn kernel_probes_annotate_their_threads_mmap() {
        let dev = 0x7f00_0000_0000;
        let vma = VmaInfo { start: dev, end: dev + 2 * P, flags_raw: 0xfb, file: Some("mmtrace-kmalloc".into()) };
        let p = Calls::new()
            // Another thread's mmap between them must not take the annotations.
            .push_as(2, Call::RemapPfnRange { vma: vma.clone(), addr: dev, pfn: 0x1234, size: 2 * P }, None)
            .push_as(2, Call::DriverMmap { after: VmaInfo { flags_raw: 0x40044fb, ..vma.clone() } }, None)
            .push_as(2, Call::MmapRegion { len: 2 * P, vm_flags: 0xfb, file: None, ret: Some(dev) }, None)
            .anon(A, P, 3)
            .push_as(
                2,
                Call::Mmap { len: 2 * P, prot: 3, flags: 1, path: Some("/dev/mmtrace-kmalloc".into()), ret: Some(dev) },
                None,
            )
            .replay();
        assert_eq!(p.vmas.len(), 2);
        let d = p.vmas.iter().find(|v| v.start == dev).unwrap();
        assert_eq!((d.end, d.t_start, d.attrs.kind, d.attrs.driver), (dev + 2 * P, ts(4), Kind::Device, true));
        // The driver's after-flags, not mmap_region's requested ones (0xfb).
        assert_eq!(d.attrs.vm_flags, Some(0x40044fb));
        assert_eq!(d.attrs.pfns, vec![PfnRange { addr: dev, pfn: 0x1234, size: 2 * P }]);
        assert_eq!(d.attrs.file.as_deref(), Some("mmtrace-kmalloc"));
        assert_eq!(
            roles(d),
            vec![(4, Role::Created), (0, Role::Annotated), (1, Role::Annotated), (2, Role::Annotated)]
        );
    }

    #[test]
    fn a_device_path_alone_makes_a_device_mapping() {
        let p = Calls::new()
            .push(Call::Mmap { len: P, prot: 3, flags: 1, path: Some("/dev/fb0".into()), ret: Some(A) })
            .push(Call::Mmap { len: P, prot: 3, flags: 1, path: Some("/dev/zero".into()), ret: Some(A + P) })
            .anon(A + 2 * P, P, 0x3 | 0x100_0000)
            .push(Call::Mmap { len: P, prot: 3, flags: 0x20022, path: None, ret: Some(A + 3 * P) })
            .replay();
        let kinds: Vec<_> = shape(&p).iter().map(|s| (s.4, s.5)).collect();
        assert_eq!(kinds, vec![(Kind::Device, 3), (Kind::File, 3), (Kind::Anon, 3), (Kind::Stack, 3)]);
    }

    #[test]
    fn exec_ends_everything_and_keeps_the_loaders_mappings() {
        let p = Calls::new()
            .anon(A, P, 3)
            .brk(0, 0x55_0000)
            .push(Call::MmapRegion { len: 2 * P, vm_flags: 0x875, file: Some("ld.so".into()), ret: Some(0x40_0000) })
            .push(Call::Exec)
            .brk(0, 0x66_0000)
            .brk(0x66_1000, 0x66_1000)
            .replay();
        assert_eq!(live(&p), vec![(0x40_0000, 0x40_2000), (0x66_0000, 0x66_1000)]);
        let old = p.vmas.iter().find(|v| v.start == A).unwrap();
        assert_eq!((old.t_end, old.touches.last().unwrap().role), (Some(ts(3)), Role::Exec));
        let ld = p.vmas.iter().find(|v| v.start == 0x40_0000).unwrap();
        assert_eq!((ld.attrs.kind, ld.attrs.prot, ld.t_start), (Kind::File, 5, ts(3)));
    }

    #[test]
    fn unannotated_pending_events_apply_at_the_end() {
        let p =
            Calls::new().push(Call::MmapRegion { len: P, vm_flags: 0x400 | 0x3, file: None, ret: Some(A) }).replay();
        assert_eq!(shape(&p), vec![(A, A + P, ts(0), None, Kind::Device, 3)]);
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut calls = Calls::new().anon(A, 2 * P, 3).munmap(A, P);
        calls.0[1].ts_ns = 1;
        let p = calls.replay();
        assert!(p.vmas.iter().all(|v| v.t_end.is_none_or(|e| e >= v.t_start)));
    }

    #[test]
    fn processes_are_kept_apart() {
        let mut calls = Calls::new().anon(A, P, 3).anon(A, P, 1);
        calls.0[1].pid = 2;
        let trace = Trace { events: calls.0, ..Trace::default() };
        let ps = replay(&trace);
        assert_eq!(ps.iter().map(|p| (p.pid, p.vmas.len())).collect::<Vec<_>>(), vec![(1, 1), (2, 1)]);
    }

    #[test]
    fn long_histories_keep_the_creation_and_the_latest() {
        let mut calls = Calls::new().anon(A, P, 3);
        for k in 0..100 {
            calls = calls.mprotect(A, P, if k % 2 == 0 { 1 } else { 3 });
        }
        let p = calls.replay();
        let last = p.vmas.iter().find(|v| v.t_end.is_none()).unwrap();
        assert_eq!(last.touches.len(), HISTORY);
        assert_eq!(last.touches[0], Touch { event: 0, role: Role::Created });
        assert_eq!(last.touches.last(), Some(&Touch { event: 100, role: Role::ProtChanged }));
        assert_eq!(last.elided, 100 + 1 - HISTORY);
        assert_eq!(p.vmas.len(), 101);
    }

    #[test]
    fn prot_strings() {
        assert_eq!(prot_string(0), "---");
        assert_eq!(prot_string(5), "r-x");
        assert_eq!(prot_string(7), "rwx");
    }
}
