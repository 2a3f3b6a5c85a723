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

use mmap_trace_common::Probe;

use super::input::{Call, Event, FaultVma, Trace, VmaInfo};
use crate::space::{
    self, AddressSpace, Backing, Change, Name, NoEnv, Region, TracedFile, Why, apply_syscall,
};
pub use crate::space::{PAGE, page_down, page_up};

const MAP_ANONYMOUS: u64 = 0x20;
const MAP_GROWSDOWN: u64 = 0x100;
const MAP_STACK: u64 = 0x20000;
use mmtrace_driver_abi::vm::{
    GROWSDOWN as VM_GROWSDOWN, IO as VM_IO, MIXEDMAP as VM_MIXEDMAP, PFNMAP as VM_PFNMAP,
    SHARED as VM_SHARED,
};
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
    pub const ALL: [Kind; 5] = [
        Kind::Anon,
        Kind::File,
        Kind::Device,
        Kind::Heap,
        Kind::Stack,
    ];

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

/// What an event did to a VMA interval: what the model says it did to the piece, or what
/// only the report's timeline sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// As the address-space model names it (created, moved, removed…).
    Model(Why),
    /// Cut at the edge of a call's range; this piece itself did not change.
    Split,
    /// A kernel probe told us more about it (vm_flags, file, PFNs).
    Annotated,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Model(why) => why.name(),
            Role::Split => "split",
            Role::Annotated => "annotated",
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
        Self {
            kind,
            prot: prot & PROT_RWX,
            vm_flags: None,
            file: None,
            pfns: Vec::new(),
            driver: false,
        }
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
    /// Page faults inside this interval while it lasted (`trace --faults`), of them
    /// those on pages not yet present (each made a page resident), and the first's time.
    pub faults: u64,
    pub faulted_in: u64,
    pub first_fault: Option<u64>,
    /// Of the faults, those that needed I/O (the thread's next fault showed its
    /// `maj_flt` grown).
    pub major: u64,
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
    /// `trace --faults`: faults no interval held (exec's own mappings, which no probe
    /// reports, or bad accesses), and the resident-set records in trace order.
    pub faults: u64,
    pub faults_outside: u64,
    /// Of those, the ones trace's own model placed (what exec or the time before
    /// attaching mapped), by that mapping, most faults first.
    pub faults_elsewhere: Vec<ElsewhereFaults>,
    pub rss: Vec<RssPoint>,
}

/// Faults in a mapping the timeline does not have, as trace attributed them.
#[derive(Clone, Debug, PartialEq)]
pub struct ElsewhereFaults {
    pub vma: FaultVma,
    pub faults: u64,
    pub faulted_in: u64,
    pub major: u64,
    pub first_fault: u64,
}

/// A resident-set counter at one instant (the rss probe's record).
#[derive(Clone, Debug, PartialEq)]
pub struct RssPoint {
    pub ts_ns: u64,
    pub member: String,
    pub bytes: i64,
}

/// One fault, until it is attributed.
#[derive(Clone, Debug)]
struct Fault {
    ts: u64,
    addr: u64,
    present: bool,
    tid: u32,
    maj_flt: u64,
    /// Known once the thread's next fault is seen.
    major: bool,
    /// Where trace placed it.
    vma: Option<FaultVma>,
}

/// A process's faults in trace order.
type FaultList = Vec<Fault>;

/// Replays the trace; processes in order of their first event.
pub fn replay(trace: &Trace) -> Vec<Process> {
    let mut order: Vec<u32> = Vec::new();
    let mut spaces: HashMap<u32, (Process, (Space, FaultList))> = HashMap::new();
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
                faults: 0,
                faults_outside: 0,
                faults_elsewhere: Vec::new(),
                rss: Vec::new(),
            };
            (p, (Space::default(), FaultList::new()))
        });
        let (space, faults) = space;
        process.first_ts = process.first_ts.min(e.ts_ns);
        process.last_ts = process.last_ts.max(e.ts_ns);
        // Faults and resident-set records are not calls: no event marker (a memset
        // makes a quarter of a million), nothing for the model to replay.
        match &e.call {
            Call::Fault {
                addr,
                present,
                maj_flt,
                vma,
            } => faults.push(Fault {
                ts: e.ts_ns,
                addr: *addr,
                present: *present,
                tid: e.tid,
                maj_flt: *maj_flt,
                major: false,
                vma: vma.clone(),
            }),
            Call::Rss { member, bytes } => process.rss.push(RssPoint {
                ts_ns: e.ts_ns,
                member: member.clone(),
                bytes: *bytes,
            }),
            _ => {
                process.events.push(i);
                process.comm.clone_from(&e.comm);
                space.apply(&trace.events, i);
            }
        }
    }
    order
        .into_iter()
        .map(|pid| {
            let (mut process, (mut space, faults)) =
                spaces.remove(&pid).expect("every pid has a space");
            process.vmas = space.finish(&trace.events);
            (process.mapped_bytes, process.unmapped_bytes) = (space.mapped, space.unmapped);
            process.faults = faults.len() as u64;
            process.faults_elsewhere = attribute_faults(&mut process.vmas, faults);
            process.faults_outside = process.faults_elsewhere.iter().map(|e| e.faults).sum();
            process
        })
        .collect()
}

/// Counts each fault in the interval that held its address at its time (the model's
/// VMAs, as replayed); returns those no interval held, grouped by the mapping trace
/// gave them (a `None`-less name-less row, start 0, for faults trace placed nowhere).
fn attribute_faults(vmas: &mut [Vma], mut faults: FaultList) -> Vec<ElsewhereFaults> {
    // A fault needed I/O when the thread's count of those grew by its next fault.
    let mut last: HashMap<u32, usize> = HashMap::new();
    for k in 0..faults.len() {
        if let Some(prev) = last.insert(faults[k].tid, k) {
            faults[prev].major = faults[k].maj_flt > faults[prev].maj_flt;
        }
    }
    faults.sort_unstable_by_key(|f| f.addr);
    let mut held = vec![false; faults.len()];
    for vma in vmas.iter_mut() {
        let from = faults.partition_point(|f| f.addr < vma.start);
        let to = faults.partition_point(|f| f.addr < vma.end);
        for (k, f) in faults[from..to].iter().enumerate() {
            let ts = f.ts;
            if ts < vma.t_start || vma.t_end.is_some_and(|end| ts >= end) || held[from + k] {
                continue;
            }
            held[from + k] = true;
            vma.faults += 1;
            vma.faulted_in += u64::from(!f.present);
            vma.major += u64::from(f.major);
            vma.first_fault = Some(vma.first_fault.map_or(ts, |first| first.min(ts)));
        }
    }
    let mut elsewhere: HashMap<FaultVma, ElsewhereFaults> = HashMap::new();
    for (f, _) in faults.iter().zip(&held).filter(|(_, held)| !**held) {
        let vma = f.vma.clone().unwrap_or_default();
        let row = elsewhere
            .entry(vma.clone())
            .or_insert_with(|| ElsewhereFaults {
                vma,
                faults: 0,
                faulted_in: 0,
                major: 0,
                first_fault: f.ts,
            });
        row.faults += 1;
        row.faulted_in += u64::from(!f.present);
        row.major += u64::from(f.major);
        row.first_fault = row.first_fault.min(f.ts);
    }
    let mut rows: Vec<ElsewhereFaults> = elsewhere.into_values().collect();
    rows.sort_by(|a, b| b.faults.cmp(&a.faults).then(a.vma.start.cmp(&b.vma.start)));
    rows
}

/// A traced call's file, as the trace names it: the model needs only its name (the
/// report has no device or inode to compare).
/// A process's model (`crate::space`, the semantics verify uses too) and the timeline
/// drawn from its changes.
struct Space {
    model: AddressSpace,
    /// The timeline's live pieces: the model's regions, cut further where a kernel probe
    /// annotated part of one.
    live: BTreeMap<u64, Vma>,
    done: Vec<Vma>,
    /// Kernel-probe events waiting for their thread's syscall, by tid.
    pending: HashMap<u32, Vec<usize>>,
    /// Times never run backwards within a process (events from several CPUs may arrive
    /// slightly out of order).
    clock: u64,
    mapped: u64,
    unmapped: u64,
}

impl Default for Space {
    fn default() -> Self {
        Self {
            model: AddressSpace::recording(),
            live: BTreeMap::new(),
            done: Vec::new(),
            pending: HashMap::new(),
            clock: 0,
            mapped: 0,
            unmapped: 0,
        }
    }
}

/// What the model's reason means on the timeline.
fn role(why: Why) -> Role {
    match why {
        // A trace has no adoptions (verify's), but a piece taken from the kernel's view
        // begins there all the same.
        Why::Adopted => Role::Model(Why::Created),
        why => Role::Model(why),
    }
}

/// The syscall number (the probe's: mmap-trace-common keeps the table), arguments and
/// result of a traced call, as far as the trace has them.
fn raw_call(call: &Call) -> Option<(i64, [u64; 6], i64)> {
    let (probe, args, ret) = match *call {
        Call::Munmap { addr, len } => (Probe::Munmap, [addr, len, 0, 0, 0, 0], 0),
        Call::Mprotect { addr, len, prot } => (Probe::Mprotect, [addr, len, prot, 0, 0, 0], 0),
        Call::Mremap {
            old_addr,
            old_len,
            new_len,
            flags,
            ret: Some(new),
        } => (
            Probe::Mremap,
            [old_addr, old_len, new_len, flags, new, 0],
            new as i64,
        ),
        Call::Brk { addr, ret } => (Probe::Brk, [addr, 0, 0, 0, 0, 0], ret as i64),
        _ => return None,
    };
    Some((probe.syscall_nr()? as i64, args, ret))
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
            Call::Mmap {
                len,
                prot,
                flags,
                path,
                ret,
            } => {
                let waiting = self.pending.remove(&e.tid).unwrap_or_default();
                if let (Some(ret), None) = (ret, &e.error) {
                    let args = [0, *len, *prot, *flags, 0, 0];
                    apply_syscall(
                        &mut self.model,
                        libc::SYS_mmap as u64,
                        args,
                        *ret as i64,
                        &TracedFile(path.as_deref().map(str::as_bytes)),
                    );
                    self.mirror(t, i, &mmap_attrs(*prot, *flags, path.clone()));
                    for w in waiting {
                        self.kernel_event(events, w, t, true);
                    }
                }
            }
            Call::Exec => {
                self.model.exec();
                self.mirror(t, i, &Attrs::new(Kind::Anon, 0));
                self.flush_thread(events, e.tid, t);
            }
            call => {
                self.flush_thread(events, e.tid, t);
                if let (false, Some((nr, args, ret))) = (e.refused(), raw_call(call)) {
                    apply_syscall(&mut self.model, nr as u64, args, ret, &NoEnv);
                    let fresh = if matches!(call, Call::Brk { .. }) {
                        Kind::Heap
                    } else {
                        Kind::Anon
                    };
                    self.mirror(t, i, &Attrs::new(fresh, 3));
                }
            }
        }
    }

    /// Draws the model's changes on the timeline at `t` for event `i`. `fresh`: the
    /// attributes of what begins from nothing (an mmap's, a heap growth's).
    fn mirror(&mut self, t: u64, i: usize, fresh: &Attrs) {
        // The pieces that ended in this change, as they were before: what moved or
        // changed protection continues their history.
        let mut before: Vec<Vma> = Vec::new();
        for change in self.model.take_changes() {
            match change {
                Change::Split { at } => self.split_at(at, i),
                Change::End { start, end, why } => {
                    before.extend(self.end(start, end, t, i, role(why)))
                }
                Change::Begin { region, why, from } => {
                    let role = role(why);
                    let sources = from
                        .map(|src| self.sources(&before, src, region.len(), why))
                        .unwrap_or_default();
                    if sources.is_empty() {
                        let mut attrs = fresh.clone();
                        if why != Why::Created {
                            attrs.prot = prot_bits(&region.perms);
                        }
                        self.insert(region.start, region.end, t, attrs, Touch { event: i, role });
                        continue;
                    }
                    let src = from.expect("sources come from `from`");
                    for source in sources {
                        let mut attrs = source.attrs.clone();
                        attrs.prot = prot_bits(&region.perms);
                        let (start, end) = if why == Why::Grown {
                            (region.start, region.end)
                        } else {
                            (
                                region.start.saturating_add(source.start.max(src) - src),
                                region
                                    .start
                                    .saturating_add(source.end - src)
                                    .min(region.end),
                            )
                        };
                        let vma = if why == Why::Grown {
                            Vma {
                                start,
                                end,
                                t_start: t,
                                t_end: None,
                                attrs,
                                touches: vec![Touch { event: i, role }],
                                elided: 0,
                                faults: 0,
                                faulted_in: 0,
                                first_fault: None,
                                major: 0,
                            }
                        } else {
                            let mut vma = Vma {
                                start,
                                end,
                                t_start: t,
                                t_end: None,
                                attrs,
                                ..source
                            };
                            vma.remember(Touch { event: i, role });
                            vma
                        };
                        self.insert_vma(vma);
                    }
                }
            }
        }
    }

    /// The pieces (ended in this change, else still live) that a piece of `len` bytes
    /// beginning from `src` continues; for growth, the one piece holding `src`.
    fn sources(&self, before: &[Vma], src: u64, len: u64, why: Why) -> Vec<Vma> {
        let end = if why == Why::Grown {
            src + 1
        } else {
            src.saturating_add(len)
        };
        let overlaps = |v: &&Vma| v.start < end && v.end > src;
        let ended: Vec<Vma> = before.iter().filter(overlaps).cloned().collect();
        if !ended.is_empty() {
            return ended;
        }
        self.live.values().filter(overlaps).cloned().collect()
    }

    /// Ends every live piece inside `[start, end)` (cutting those across its edges) with
    /// `role`; returns them as they were before.
    fn end(&mut self, start: u64, end: u64, t: u64, i: usize, role: Role) -> Vec<Vma> {
        if start >= end {
            return Vec::new();
        }
        self.split_at(start, i);
        self.split_at(end, i);
        let keys: Vec<u64> = self.live.range(start..end).map(|(k, _)| *k).collect();
        let mut before = Vec::new();
        for key in keys {
            let mut old = self.live.remove(&key).expect("listed above");
            before.push(old.clone());
            old.remember(Touch { event: i, role });
            if matches!(
                role,
                Role::Model(Why::Removed) | Role::Model(Why::Shrunk) | Role::Model(Why::Replaced)
            ) {
                self.unmapped = self.unmapped.saturating_add(old.len());
            }
            old.t_end = Some(t);
            self.done.push(old);
        }
        before
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
            Call::MmapRegion {
                len,
                vm_flags,
                file,
                ret: Some(addr),
            } => {
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
                    let mut attrs = Attrs::new(
                        if file.is_some() {
                            Kind::File
                        } else {
                            Kind::Anon
                        },
                        0,
                    )
                    .with_file(file.clone());
                    attrs.learn_vm_flags(*vm_flags);
                    self.model
                        .map(probe_region(start, end, *vm_flags, file.as_deref()));
                    self.mirror(t, i, &attrs);
                }
            }
            Call::RemapPfnRange {
                vma,
                addr,
                pfn,
                size,
            } => {
                let (start, end) = pages(*addr, *size);
                let range = PfnRange {
                    addr: *addr,
                    pfn: *pfn,
                    size: *size,
                };
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
        let region = probe_region(
            page_down(vma.start),
            page_up(vma.end),
            vma.flags_raw,
            vma.file.as_deref(),
        );
        self.model.fill(region);
        self.mirror(t, i, &attrs);
    }

    fn insert(&mut self, start: u64, end: u64, t: u64, attrs: Attrs, touch: Touch) {
        self.insert_vma(Vma {
            start,
            end,
            t_start: t,
            t_end: None,
            attrs,
            touches: vec![touch],
            elided: 0,
            faults: 0,
            faulted_in: 0,
            first_fault: None,
            major: 0,
        });
    }

    fn insert_vma(&mut self, vma: Vma) {
        if vma.start < vma.end {
            if matches!(
                vma.touches.last(),
                Some(Touch {
                    role: Role::Model(Why::Created) | Role::Model(Why::Grown),
                    ..
                })
            ) {
                self.mapped = self.mapped.saturating_add(vma.len());
            }
            self.live.insert(vma.start, vma);
        }
    }

    /// Cuts the live VMA containing `addr` (strictly inside it) in two.
    fn split_at(&mut self, addr: u64, i: usize) {
        let Some((_, vma)) = self.live.range_mut(..addr).next_back() else {
            return;
        };
        if vma.end <= addr {
            return;
        }
        let mut upper = vma.clone();
        vma.end = addr;
        upper.start = addr;
        let split = Touch {
            event: i,
            role: Role::Split,
        };
        // One call may cut a VMA at both ends of its range: one `split` is enough.
        if vma.touches.last() != Some(&split) {
            vma.remember(split);
            upper.remember(split);
        }
        self.live.insert(addr, upper);
    }

    /// Starts of the live VMAs overlapping `[start, end)`.
    fn overlapping(&self, start: u64, end: u64) -> Vec<u64> {
        if start >= end {
            return Vec::new(); // a malformed probe record
        }
        let first = self
            .live
            .range(..=start)
            .next_back()
            .filter(|(_, v)| v.end > start)
            .map(|(k, _)| *k);
        first
            .into_iter()
            .chain(
                self.live
                    .range(start..end)
                    .map(|(k, _)| *k)
                    .filter(|k| Some(*k) != first),
            )
            .collect()
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
            let vma = self
                .live
                .get_mut(&key.max(start))
                .expect("the piece inside the range");
            change(&mut vma.attrs);
            vma.remember(Touch {
                event: i,
                role: Role::Annotated,
            });
        }
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

/// `[addr, addr + len)` widened to whole pages.
fn pages(addr: u64, len: u64) -> (u64, u64) {
    (page_down(addr), page_up(addr.saturating_add(len)))
}

/// PROT_* bits of `rwxp`.
fn prot_bits(perms: &str) -> u64 {
    let b = perms.as_bytes();
    [(0, b'r', 1), (1, b'w', 2), (2, b'x', 4)]
        .iter()
        .filter(|&&(i, c, _)| b.get(i) == Some(&c))
        .map(|&(_, _, bit)| bit)
        .sum()
}

/// A VMA a kernel probe reported (its vm_flags' rwx and shared bits, its file's name).
fn probe_region(start: u64, end: u64, vm_flags: u64, file: Option<&str>) -> Region {
    let mut region = Region::anonymous(
        start,
        end,
        &space::region::perms(vm_flags & PROT_RWX, vm_flags & VM_SHARED != 0),
    );
    if let Some(f) = file {
        region.backing = Backing::File(Name::from_path(f.as_bytes()));
    }
    region
}

fn mmap_attrs(prot: u64, flags: u64, path: Option<String>) -> Attrs {
    let kind = if flags & MAP_ANONYMOUS != 0 {
        if flags & (MAP_GROWSDOWN | MAP_STACK) != 0 {
            Kind::Stack
        } else {
            Kind::Anon
        }
    } else {
        match path.as_deref() {
            Some(p)
                if p.starts_with("/dev/") && p != "/dev/zero" && !p.starts_with("/dev/shm/") =>
            {
                Kind::Device
            }
            _ => Kind::File,
        }
    };
    Attrs::new(kind, prot).with_file(path)
}

/// `rw-`, `r-x`, `---`: the maps column without its sharing letter.
pub fn prot_string(prot: u64) -> String {
    let mut perms = crate::space::region::perms(prot, false);
    perms.pop();
    perms
}

#[cfg(test)]
mod tests {
    use super::*;

    const MREMAP_DONTUNMAP: u64 = 4;

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
                stack: Vec::new(),
            });
            self
        }

        fn push(self, call: Call) -> Self {
            self.push_as(1, call, None)
        }

        fn anon(self, ret: u64, len: u64, prot: u64) -> Self {
            self.push(Call::Mmap {
                len,
                prot,
                flags: 0x22,
                path: None,
                ret: Some(ret),
            })
        }

        fn file(self, ret: u64, len: u64, path: &str) -> Self {
            self.push(Call::Mmap {
                len,
                prot: 1,
                flags: 0x2,
                path: Some(path.into()),
                ret: Some(ret),
            })
        }

        fn munmap(self, addr: u64, len: u64) -> Self {
            self.push(Call::Munmap { addr, len })
        }

        fn mprotect(self, addr: u64, len: u64, prot: u64) -> Self {
            self.push(Call::Mprotect { addr, len, prot })
        }

        fn mremap(self, old_addr: u64, old_len: u64, new_len: u64, flags: u64, ret: u64) -> Self {
            self.push(Call::Mremap {
                old_addr,
                old_len,
                new_len,
                flags,
                ret: Some(ret),
            })
        }

        fn brk(self, addr: u64, ret: u64) -> Self {
            self.push(Call::Brk { addr, ret })
        }

        fn replay(self) -> Process {
            let trace = Trace {
                events: self.0,
                ..Trace::default()
            };
            replay(&trace).pop().expect("one process")
        }
    }

    fn ts(n: usize) -> u64 {
        T0 + 10 * n as u64
    }

    /// `(start, end, t_start, t_end, kind, prot)` of every interval, sorted.
    fn shape(p: &Process) -> Vec<(u64, u64, u64, Option<u64>, Kind, u64)> {
        let mut s: Vec<_> = p
            .vmas
            .iter()
            .map(|v| {
                (
                    v.start,
                    v.end,
                    v.t_start,
                    v.t_end,
                    v.attrs.kind,
                    v.attrs.prot,
                )
            })
            .collect();
        s.sort_by_key(|x| (x.0, x.2));
        s
    }

    fn live(p: &Process) -> Vec<(u64, u64)> {
        let mut l: Vec<_> = p
            .vmas
            .iter()
            .filter(|v| v.t_end.is_none())
            .map(|v| (v.start, v.end))
            .collect();
        l.sort();
        l
    }

    fn roles(v: &Vma) -> Vec<(usize, Role)> {
        v.touches.iter().map(|t| (t.event, t.role)).collect()
    }

    const A: u64 = 0x10_0000;
    const P: u64 = PAGE;

    /// Faults go to the interval that held their address at their time (the timeline cuts
    /// a mapping retroactively where a later call splits it, so the piece, with its
    /// prot before and after the mprotect); none to an unmapped range or to the event
    /// list (no marker per fault). The rss records become the curve.
    #[test]
    fn faults_count_in_the_interval_of_their_time() {
        let a = 0x7f00_0000_0000;
        let fault = |addr, present| Call::Fault {
            addr,
            present,
            maj_flt: 0,
            vma: None,
        };
        let p = Calls::new()
            .anon(a, 0x3000, 3)
            .push(fault(a + 0x2000, false))
            .push(fault(a + 0x2fff, true))
            .mprotect(a + 0x1000, 0x1000, 1)
            .push(fault(a + 0x1000, false))
            .push(fault(a + 0x5000, false))
            .push(Call::Rss {
                member: "anon".into(),
                bytes: 8192,
            })
            .replay();
        assert_eq!(p.events.len(), 2, "the mmap and mprotect only");
        assert_eq!((p.faults, p.faults_outside), (4, 1));
        assert_eq!(p.faults_elsewhere.len(), 1);
        assert_eq!(
            (
                p.faults_elsewhere[0].vma.end.0,
                p.faults_elsewhere[0].faults
            ),
            (0, 1),
            "trace placed it nowhere either"
        );
        let counts: Vec<(u64, u64, u64, u64, Option<u64>)> = {
            let mut c: Vec<_> = p
                .vmas
                .iter()
                .map(|v| (v.start, v.end, v.faults, v.faulted_in, v.first_fault))
                .collect();
            c.sort_by_key(|&(s, e, n, ..)| (s, e, n));
            c
        };
        assert_eq!(
            counts,
            vec![
                (a, a + 0x1000, 0, 0, None),
                (a + 0x1000, a + 0x2000, 0, 0, None),
                (a + 0x1000, a + 0x2000, 1, 1, Some(ts(4))),
                (a + 0x2000, a + 0x3000, 2, 1, Some(ts(1))),
            ]
        );
        assert_eq!(
            p.rss,
            vec![RssPoint {
                ts_ns: ts(6),
                member: "anon".into(),
                bytes: 8192
            }]
        );
    }

    /// Faults outside the timeline (what exec mapped) are grouped by the mapping trace gave
    /// them.
    #[test]
    fn faults_outside_the_timeline_keep_traces_mapping() {
        let binary = FaultVma {
            start: crate::schema::Hex(0x5555_0000_0000),
            end: crate::schema::Hex(0x5555_0001_0000),
            perms: "r-xp".into(),
            name: "/bin/prog".into(),
        };
        let fault = |addr| Call::Fault {
            addr,
            present: false,
            maj_flt: 0,
            vma: Some(binary.clone()),
        };
        let p = Calls::new()
            .anon(0x7f00_0000_0000, 0x1000, 3)
            .push(fault(0x5555_0000_0100))
            .push(fault(0x5555_0000_2100))
            .replay();
        assert_eq!(p.faults_outside, 2);
        assert_eq!(
            p.faults_elsewhere,
            vec![ElsewhereFaults {
                vma: binary.clone(),
                faults: 2,
                faulted_in: 2,
                major: 0,
                first_fault: ts(1),
            }]
        );
    }

    /// A fault needed I/O when the same thread's next fault shows `maj_flt` grown; another
    /// thread's count says nothing about it, and a thread's last fault is not judged.
    #[test]
    fn major_faults_are_read_from_the_threads_next_fault() {
        let a = 0x7f00_0000_0000;
        let fault = |addr, maj_flt| Call::Fault {
            addr,
            present: false,
            maj_flt,
            vma: None,
        };
        let p = Calls::new()
            .anon(a, 0x4000, 1)
            .push_as(1, fault(a, 5), None)
            .push_as(2, fault(a + 0x1000, 0), None)
            .push_as(1, fault(a + 0x2000, 6), None)
            .push_as(2, fault(a + 0x3000, 0), None)
            .push_as(1, fault(a + 0x3000, 6), None)
            .replay();
        let v = &p.vmas[0];
        assert_eq!((v.faults, v.major), (5, 1));
    }

    #[test]
    fn mmap_creates_page_rounded_vma() {
        let p = Calls::new().anon(A, 100, 3).replay();
        assert_eq!(shape(&p), vec![(A, A + P, ts(0), None, Kind::Anon, 3)]);
        assert_eq!(roles(&p.vmas[0]), vec![(0, Role::Model(Why::Created))]);
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
        assert_eq!(
            roles(removed),
            vec![
                (0, Role::Model(Why::Created)),
                (1, Role::Split),
                (1, Role::Model(Why::Removed))
            ]
        );
        let high = p.vmas.iter().find(|v| v.start == A + 2 * P).unwrap();
        assert_eq!(
            roles(high),
            vec![(0, Role::Model(Why::Created)), (1, Role::Split)]
        );
        let low = p.vmas.iter().find(|v| v.start == A).unwrap();
        assert_eq!(
            roles(low),
            vec![(0, Role::Model(Why::Created)), (1, Role::Split)]
        );
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
        let p = Calls::new()
            .file(A, 4 * P, "/lib/libc.so.6")
            .anon(A + P, 2 * P, 3)
            .replay();
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
        assert_eq!(
            replaced.touches.last(),
            Some(&Touch {
                event: 1,
                role: Role::Model(Why::Replaced)
            })
        );
        assert_eq!((p.mapped_bytes, p.unmapped_bytes), (6 * P, 2 * P));
        assert_eq!(replaced.attrs.file.as_deref(), Some("/lib/libc.so.6"));
        let new = p.vmas.iter().find(|v| v.t_start == ts(1)).unwrap();
        assert_eq!(roles(new), vec![(1, Role::Model(Why::Created))]);
    }

    #[test]
    fn map_fixed_over_exactly_one_vma_and_over_several() {
        let p = Calls::new()
            .anon(A, P, 1)
            .anon(A + P, P, 3)
            .anon(A, 2 * P, 7)
            .replay();
        assert_eq!(live(&p), vec![(A, A + 2 * P)]);
        assert_eq!(p.vmas.len(), 3);
        assert!(
            p.vmas
                .iter()
                .filter(|v| v.t_end == Some(ts(2)))
                .all(|v| v.touches.len() == 2)
        );
    }

    #[test]
    fn mprotect_changes_prot_per_range() {
        let p = Calls::new()
            .anon(A, 3 * P, 3)
            .mprotect(A + P, P, 0)
            .mprotect(A + P, P, 0)
            .replay();
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
        assert_eq!(
            roles(guard),
            vec![
                (0, Role::Model(Why::Created)),
                (1, Role::Split),
                (1, Role::Model(Why::ProtChanged))
            ]
        );
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
        let p = Calls::new()
            .anon(A, P, 1)
            .anon(A + P, P, 3)
            .mprotect(A, 2 * P, 1)
            .replay();
        assert_eq!(p.vmas.len(), 3);
        assert_eq!(
            p.vmas
                .iter()
                .filter(|v| v.t_end.is_none() && v.attrs.prot == 1)
                .count(),
            2
        );
    }

    #[test]
    fn mremap_move_carries_attributes_and_history() {
        let dest = 0x50_0000;
        let p = Calls::new()
            .file(A, 2 * P, "/data")
            .mprotect(A + P, P, 0)
            .mremap(A, 2 * P, 3 * P, 1, dest)
            .replay();
        assert_eq!(
            live(&p),
            vec![
                (dest, dest + P),
                (dest + P, dest + 2 * P),
                (dest + 2 * P, dest + 3 * P)
            ]
        );
        assert!(
            p.vmas
                .iter()
                .filter(|v| v.start < dest)
                .all(|v| v.t_end.is_some())
        );
        let moved = p.vmas.iter().find(|v| v.start == dest).unwrap();
        assert_eq!(moved.attrs.file.as_deref(), Some("/data"));
        assert_eq!(moved.t_start, ts(2));
        assert_eq!(
            roles(moved),
            vec![
                (0, Role::Model(Why::Created)),
                (1, Role::Split),
                (2, Role::Model(Why::MovedHere))
            ]
        );
        let guard = p.vmas.iter().find(|v| v.start == dest + P).unwrap();
        assert_eq!(guard.attrs.prot, 0);
        let grown = p.vmas.iter().find(|v| v.start == dest + 2 * P).unwrap();
        assert_eq!(
            (grown.attrs.prot, roles(grown)),
            (0, vec![(2, Role::Model(Why::Grown))])
        );
        let away = p
            .vmas
            .iter()
            .find(|v| v.start == A && v.t_end.is_some())
            .unwrap();
        assert_eq!(
            away.touches.last().unwrap().role,
            Role::Model(Why::MovedAway)
        );
        // The move itself maps and unmaps nothing; the growth maps a page.
        assert_eq!((p.mapped_bytes, p.unmapped_bytes), (3 * P, 0));
    }

    #[test]
    fn mremap_in_place_grow_and_shrink() {
        let p = Calls::new()
            .anon(A, 2 * P, 3)
            .mremap(A, 2 * P, 4 * P, 0, A)
            .mremap(A, 4 * P, P, 0, A)
            .replay();
        assert_eq!(live(&p), vec![(A, A + P)]);
        assert_eq!(
            shape(&p),
            vec![
                (A, A + P, ts(0), None, Kind::Anon, 3),
                (A + P, A + 2 * P, ts(0), Some(ts(2)), Kind::Anon, 3),
                (A + 2 * P, A + 4 * P, ts(1), Some(ts(2)), Kind::Anon, 3),
            ]
        );
        assert!(
            p.vmas
                .iter()
                .filter(|v| v.t_end.is_some())
                .all(|v| v.touches.last().unwrap().role == Role::Model(Why::Shrunk))
        );
    }

    #[test]
    fn mremap_dontunmap_keeps_the_source_and_fixed_replaces_the_target() {
        let dest = 0x50_0000;
        let p = Calls::new()
            .anon(A, P, 3)
            .anon(dest, P, 1)
            .mremap(A, P, P, 1 | 2 | MREMAP_DONTUNMAP, dest)
            .replay();
        assert_eq!(live(&p), vec![(A, A + P), (dest, dest + P)]);
        let target = p
            .vmas
            .iter()
            .find(|v| v.start == dest && v.t_end.is_none())
            .unwrap();
        assert_eq!(target.attrs.prot, 3);
        let old_target = p
            .vmas
            .iter()
            .find(|v| v.start == dest && v.t_end.is_some())
            .unwrap();
        assert_eq!(
            old_target.touches.last().unwrap().role,
            Role::Model(Why::Replaced)
        );
    }

    #[test]
    fn mremap_of_an_unknown_source_still_maps_the_target() {
        let p = Calls::new().mremap(A, P, 2 * P, 1, 0x50_0000).replay();
        assert_eq!(
            live(&p),
            vec![(0x50_0000, 0x50_1000), (0x50_1000, 0x50_2000)]
        );
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
        assert_eq!(
            live(&p),
            vec![(0x55_0000, 0x55_1000), (0xd5_0000_0000, 0xd5_0000_2000)]
        );
        assert_eq!(p.mapped_bytes, 3 * P);
    }

    #[test]
    fn brk_with_an_unaligned_start() {
        let h = 0x55_0010;
        let p = Calls::new()
            .brk(0, h)
            .brk(h + 10, h + 10)
            .brk(h + P, h + P)
            .replay();
        assert_eq!(live(&p), vec![(0x55_1000, 0x55_2000)]);
    }

    #[test]
    fn refused_calls_change_nothing() {
        let p = Calls::new()
            .anon(A, P, 3)
            .push_as(1, Call::Munmap { addr: A, len: P }, Some("EINVAL"))
            .push_as(
                1,
                Call::Mmap {
                    len: P,
                    prot: 3,
                    flags: 0x22,
                    path: None,
                    ret: None,
                },
                Some("ENOMEM"),
            )
            .replay();
        assert_eq!(shape(&p), vec![(A, A + P, ts(0), None, Kind::Anon, 3)]);
        assert_eq!(p.events.len(), 3);
    }

    #[test]
    fn kernel_probes_annotate_their_threads_mmap() {
        let dev = 0x7f00_0000_0000;
        let vma = VmaInfo {
            start: dev,
            end: dev + 2 * P,
            flags_raw: 0xfb,
            file: Some("mmtrace-kmalloc".into()),
        };
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
        assert_eq!(
            (d.end, d.t_start, d.attrs.kind, d.attrs.driver),
            (dev + 2 * P, ts(4), Kind::Device, true)
        );
        // The driver's after-flags, not mmap_region's requested ones (0xfb).
        assert_eq!(d.attrs.vm_flags, Some(0x40044fb));
        assert_eq!(
            d.attrs.pfns,
            vec![PfnRange {
                addr: dev,
                pfn: 0x1234,
                size: 2 * P
            }]
        );
        assert_eq!(d.attrs.file.as_deref(), Some("mmtrace-kmalloc"));
        assert_eq!(
            roles(d),
            vec![
                (4, Role::Model(Why::Created)),
                (0, Role::Annotated),
                (1, Role::Annotated),
                (2, Role::Annotated)
            ]
        );
    }

    #[test]
    fn a_device_path_alone_makes_a_device_mapping() {
        let p = Calls::new()
            .push(Call::Mmap {
                len: P,
                prot: 3,
                flags: 1,
                path: Some("/dev/fb0".into()),
                ret: Some(A),
            })
            .push(Call::Mmap {
                len: P,
                prot: 3,
                flags: 1,
                path: Some("/dev/zero".into()),
                ret: Some(A + P),
            })
            .anon(A + 2 * P, P, 0x3 | 0x100_0000)
            .push(Call::Mmap {
                len: P,
                prot: 3,
                flags: 0x20022,
                path: None,
                ret: Some(A + 3 * P),
            })
            .replay();
        let kinds: Vec<_> = shape(&p).iter().map(|s| (s.4, s.5)).collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::Device, 3),
                (Kind::File, 3),
                (Kind::Anon, 3),
                (Kind::Stack, 3)
            ]
        );
    }

    #[test]
    fn exec_ends_everything_and_keeps_the_loaders_mappings() {
        let p = Calls::new()
            .anon(A, P, 3)
            .brk(0, 0x55_0000)
            .push(Call::MmapRegion {
                len: 2 * P,
                vm_flags: 0x875,
                file: Some("ld.so".into()),
                ret: Some(0x40_0000),
            })
            .push(Call::Exec)
            .brk(0, 0x66_0000)
            .brk(0x66_1000, 0x66_1000)
            .replay();
        assert_eq!(
            live(&p),
            vec![(0x40_0000, 0x40_2000), (0x66_0000, 0x66_1000)]
        );
        let old = p.vmas.iter().find(|v| v.start == A).unwrap();
        assert_eq!(
            (old.t_end, old.touches.last().unwrap().role),
            (Some(ts(3)), Role::Model(Why::Exec))
        );
        let ld = p.vmas.iter().find(|v| v.start == 0x40_0000).unwrap();
        assert_eq!(
            (ld.attrs.kind, ld.attrs.prot, ld.t_start),
            (Kind::File, 5, ts(3))
        );
    }

    #[test]
    fn unannotated_pending_events_apply_at_the_end() {
        let p = Calls::new()
            .push(Call::MmapRegion {
                len: P,
                vm_flags: 0x400 | 0x3,
                file: None,
                ret: Some(A),
            })
            .replay();
        assert_eq!(shape(&p), vec![(A, A + P, ts(0), None, Kind::Device, 3)]);
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut calls = Calls::new().anon(A, 2 * P, 3).munmap(A, P);
        calls.0[1].ts_ns = 1;
        let p = calls.replay();
        assert!(
            p.vmas
                .iter()
                .all(|v| v.t_end.is_none_or(|e| e >= v.t_start))
        );
    }

    #[test]
    fn processes_are_kept_apart() {
        let mut calls = Calls::new().anon(A, P, 3).anon(A, P, 1);
        calls.0[1].pid = 2;
        let trace = Trace {
            events: calls.0,
            ..Trace::default()
        };
        let ps = replay(&trace);
        assert_eq!(
            ps.iter().map(|p| (p.pid, p.vmas.len())).collect::<Vec<_>>(),
            vec![(1, 1), (2, 1)]
        );
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
        assert_eq!(
            last.touches[0],
            Touch {
                event: 0,
                role: Role::Model(Why::Created)
            }
        );
        assert_eq!(
            last.touches.last(),
            Some(&Touch {
                event: 100,
                role: Role::Model(Why::ProtChanged)
            })
        );
        assert_eq!(last.elided, 100 + 1 - HISTORY);
        assert_eq!(p.vmas.len(), 101);
    }

    #[test]
    fn mremap_dup_keeps_the_source_and_maps_a_second_copy() {
        let dest = 0x50_0000;
        let p = Calls::new()
            .push(Call::Mmap {
                len: 2 * P,
                prot: 3,
                flags: 1,
                path: Some("/dev/shm/x".into()),
                ret: Some(A),
            })
            .mremap(A + P, 0, 3 * P, 1, dest)
            .replay();
        assert_eq!(
            live(&p),
            vec![(A, A + 2 * P), (dest, dest + P), (dest + P, dest + 3 * P)]
        );
        let copy = p.vmas.iter().find(|v| v.start == dest).unwrap();
        assert_eq!(
            (copy.attrs.file.as_deref(), roles(copy)),
            (
                Some("/dev/shm/x"),
                vec![
                    (0, Role::Model(Why::Created)),
                    (1, Role::Model(Why::MovedHere))
                ]
            )
        );
        let grown = p.vmas.iter().find(|v| v.start == dest + P).unwrap();
        assert_eq!(roles(grown), vec![(1, Role::Model(Why::Grown))]);
    }

    /// verify's shadow and this replay run the one model: the same calls leave the same
    /// address space in both (issue 12: a rule fixed once is fixed for both). mremap with
    /// old_len 0 was the rule they disagreed on.
    #[test]
    fn report_and_verify_agree() {
        let dest = 0x50_0000;
        let h = 0x55_0000;
        let sequences = [
            Calls::new()
                .anon(A, 4 * P, 3)
                .munmap(A + P, P)
                .mprotect(A + 2 * P, P, 1)
                .anon(A + 3 * P, P, 0),
            // mremap dup of a shared file mapping (old_len 0): a second mapping, the old stays.
            Calls::new()
                .push(Call::Mmap {
                    len: 2 * P,
                    prot: 3,
                    flags: 1,
                    path: Some("/dev/shm/x".into()),
                    ret: Some(A),
                })
                .mremap(A + P, 0, 3 * P, 1, dest),
            // Move with growth, DONTUNMAP, in-place shrink.
            Calls::new()
                .file(A, 2 * P, "/data")
                .mprotect(A + P, P, 0)
                .mremap(A, 2 * P, 3 * P, 1, dest)
                .anon(A + 8 * P, P, 3)
                .mremap(A + 8 * P, P, P, 1 | 2 | MREMAP_DONTUNMAP, dest + 8 * P)
                .mremap(dest, 3 * P, P, 0, dest),
            Calls::new()
                .brk(0, h)
                .brk(h + 0x3000, h + 0x3000)
                .brk(h + 0x1800, h + 0x1800),
        ];
        for calls in sequences {
            let mut shadow = crate::verify::shadow::ShadowSpace::default();
            for e in &calls.0 {
                match &e.call {
                    Call::Mmap {
                        len,
                        prot,
                        flags,
                        path,
                        ret: Some(ret),
                    } => {
                        let args = [0, *len, *prot, *flags, 0, 0];
                        shadow.apply_syscall(
                            libc::SYS_mmap as u64,
                            args,
                            *ret as i64,
                            &TracedFile(path.as_deref().map(str::as_bytes)),
                        );
                    }
                    call => {
                        let (nr, args, ret) = raw_call(call).expect("a syscall");
                        shadow.apply_syscall(nr as u64, args, ret, &NoEnv);
                    }
                }
            }
            let p = calls.replay();
            let mut report: Vec<(u64, u64, u64)> = Vec::new();
            let mut pieces: Vec<&Vma> = p.vmas.iter().filter(|v| v.t_end.is_none()).collect();
            pieces.sort_by_key(|v| v.start);
            for v in pieces {
                match report.last_mut() {
                    Some(last) if last.1 == v.start && last.2 == v.attrs.prot => last.1 = v.end,
                    _ => report.push((v.start, v.end, v.attrs.prot)),
                }
            }
            let verify: Vec<(u64, u64, u64)> = shadow
                .regions()
                .iter()
                .map(|r| (r.start, r.end, prot_bits(&r.perms)))
                .collect();
            assert_eq!(report, verify);
        }
    }

    #[test]
    fn prot_strings() {
        assert_eq!(prot_string(0), "---");
        assert_eq!(prot_string(5), "r-x");
        assert_eq!(prot_string(7), "rwx");
    }

    mod proptests {
        use proptest::prelude::*;

        use super::*;

        fn value() -> impl Strategy<Value = u64> {
            prop_oneof![
                (0u64..16).prop_map(|k| A + k * P),
                (0u64..6).prop_map(|k| k * P),
                Just(u64::MAX),
                any::<u64>()
            ]
        }

        fn a_call() -> impl Strategy<Value = (u32, Call)> {
            let vma = || {
                (value(), value(), any::<u64>()).prop_map(|(start, end, flags_raw)| VmaInfo {
                    start,
                    end,
                    flags_raw,
                    file: None,
                })
            };
            let call = prop_oneof![
                (
                    value(),
                    any::<u64>(),
                    any::<u64>(),
                    prop::option::of(Just("/f".to_string())),
                    prop::option::of(value())
                )
                    .prop_map(|(len, prot, flags, path, ret)| Call::Mmap {
                        len,
                        prot,
                        flags,
                        path,
                        ret
                    }),
                (value(), value()).prop_map(|(addr, len)| Call::Munmap { addr, len }),
                (value(), value(), any::<u64>()).prop_map(|(addr, len, prot)| Call::Mprotect {
                    addr,
                    len,
                    prot
                }),
                (
                    value(),
                    value(),
                    value(),
                    0u64..8,
                    prop::option::of(value())
                )
                    .prop_map(|(old_addr, old_len, new_len, flags, ret)| {
                        Call::Mremap {
                            old_addr,
                            old_len,
                            new_len,
                            flags,
                            ret,
                        }
                    }),
                (value(), value()).prop_map(|(addr, ret)| Call::Brk { addr, ret }),
                (value(), any::<u64>(), prop::option::of(value())).prop_map(
                    |(len, vm_flags, ret)| Call::MmapRegion {
                        len,
                        vm_flags,
                        file: None,
                        ret
                    }
                ),
                (vma(), value(), any::<u64>(), value()).prop_map(|(vma, addr, pfn, size)| {
                    Call::RemapPfnRange {
                        vma,
                        addr,
                        pfn,
                        size,
                    }
                }),
                vma().prop_map(|after| Call::DriverMmap { after }),
                Just(Call::Exec),
            ];
            (1u32..3, call)
        }

        proptest! {
            /// A trace file is input: any calls in any order replay without a panic, and
            /// every interval is non-empty and ends no earlier than it began.
            #[test]
            fn replay_never_panics(calls in proptest::collection::vec(a_call(), 1..30)) {
                let mut c = Calls::new();
                for (tid, call) in calls {
                    c = c.push_as(tid, call, None);
                }
                let p = c.replay();
                prop_assert!(p.vmas.iter().all(|v| v.start < v.end && v.t_end.is_none_or(|e| e >= v.t_start)));
            }
        }
    }
}
