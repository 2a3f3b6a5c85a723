//! What the agent keeps between scrapes: counts per series and, per live process, its
//! address space (the one model, `crate::space`) and what it holds mapped by kind.
//!
//! Bounded: a series is (what, comm slot, cgroup slot); the first `max_comms` process
//! names and the first `max_cgroups` cgroups that make a traced call get slots of their
//! own for the agent's whole life (a counter's series never changes its labels), every
//! later one is counted under `other`. A process's state lives in the one lifecycle
//! (`space::ProcessTable`), from its first event to its exit record.

use std::collections::HashMap;

use mmap_trace_common::{MmChangeCause, Probe, RssMember, TASK_COMM_LEN};

use crate::{
    kernel::decode::{Event, FilePath, c_str, is_error},
    process::cgroup::{ContainerIdentity, Names, container_identity},
    space::{
        AddressSpace, Backing, Lifecycle, ProcessState, ProcessTable, Region, TracedFile,
        apply_syscall, maps,
    },
};

/// `mapped_bytes`' kinds, in label order.
pub const KINDS: [&str; 6] = ["anon", "file", "shared", "device", "stack", "heap"];
const ANON: usize = 0;
const FILE: usize = 1;
const SHARED: usize = 2;
const DEVICE: usize = 3;
const STACK: usize = 4;
const HEAP: usize = 5;

/// The label a name gets once the slots are full.
pub const OTHER: &str = "other";

/// What a syscall series counts: a probed call, or one of the catch-all's causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum What {
    /// mmap, munmap, mprotect, mremap, brk (their probes' ids).
    Probed(u32),
    /// The catch-all: another syscall (x86-64 number; ia32 flagged).
    Syscall { nr: i64, compat: bool },
    /// The catch-all: a fault outside any syscall (stack growth).
    Fault,
    /// The catch-all: another task changed the mm (khugepaged, a debugger…).
    OtherTask,
}

impl What {
    pub fn label(self) -> String {
        match self {
            What::Probed(p) => Probe::from_u32(p)
                .map_or("unknown", |p| p.name())
                .to_owned(),
            What::Syscall { nr, compat } => crate::kernel::syscall_names::name(nr, compat),
            What::Fault => "fault".to_owned(),
            What::OtherTask => "other_task".to_owned(),
        }
    }
}

/// A (comm slot, cgroup slot) pair: who a series is about.
pub type Who = (u16, u16);

/// Names given slots in order of arrival; slot 0 is [`OTHER`].
struct Slots<K> {
    names: Vec<String>,
    index: HashMap<K, u16>,
    cap: usize,
}

impl<K: std::hash::Hash + Eq> Slots<K> {
    fn new(cap: usize) -> Self {
        Self {
            names: vec![OTHER.to_owned()],
            index: HashMap::new(),
            cap,
        }
    }

    fn slot(&mut self, key: K, name: impl FnOnce() -> String) -> u16 {
        if let Some(&slot) = self.index.get(&key) {
            return slot;
        }
        let slot = if self.names.len() <= self.cap {
            self.names.push(name());
            (self.names.len() - 1) as u16
        } else {
            0
        };
        // Keys that map to `other` are remembered too, up to a bound (cgroup ids churn).
        if slot != 0 || self.index.len() < 16 * self.cap.max(256) {
            self.index.insert(key, slot);
        }
        slot
    }
}

/// A process as the agent keeps it.
#[derive(Clone, Debug, Default)]
pub struct ProcMemory {
    who: Who,
    space: AddressSpace,
    /// The model holds the kernel's view from some point on.
    seeded: bool,
    /// Mapped bytes by kind, as of the last [`Agent::totals`].
    mapped: [u64; KINDS.len()],
    /// The space changed since `mapped` was computed.
    dirty: bool,
    /// Resident bytes by `RssMember` (`--faults`).
    resident: [i64; RssMember::ALL.len()],
}

impl ProcessState for ProcMemory {
    /// A fork child starts with its parent's space (the agent attaches no fork probe
    /// today: a child is first seen at its first call and read from maps then).
    fn fork_child(&self) -> Self {
        Self {
            space: self.space.fork_child(),
            dirty: true,
            ..self.clone()
        }
    }

    /// Exec replaced the space: read the new one from the kernel.
    fn exec(&mut self) {
        self.space.exec();
        self.seeded = false;
        self.dirty = true;
        self.resident = [0; RssMember::ALL.len()];
    }
}

/// Something a person would want to be told about (OTLP logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notable {
    pub kind: NotableKind,
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    pub addr: u64,
    pub len: u64,
    pub prot: u64,
    /// The mapped file, for a device mapping.
    pub path: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotableKind {
    WritableExecutable,
    Device,
    Large,
}

impl NotableKind {
    pub fn name(self) -> &'static str {
        match self {
            NotableKind::WritableExecutable => "writable_executable_mapping",
            NotableKind::Device => "device_mapping",
            NotableKind::Large => "large_mapping",
        }
    }
}

pub struct Limits {
    pub max_comms: usize,
    pub max_cgroups: usize,
    /// A mapping of at least this many bytes is [`NotableKind::Large`].
    pub large_bytes: u64,
}

pub struct Agent {
    comms: Slots<[u8; TASK_COMM_LEN]>,
    cgroups: Slots<u64>,
    cgroup_names: Names,
    /// Per cgroup slot: the container it is.
    identities: Vec<ContainerIdentity>,
    pub processes: ProcessTable<ProcMemory>,
    /// Counts not yet published, per series.
    pub syscalls: HashMap<(What, Who), u64>,
    pub wx: HashMap<Who, u64>,
    pub faults: HashMap<Who, u64>,
    pub notable: Vec<Notable>,
    limits: Limits,
}

const PROT_WX: u64 = (libc::PROT_WRITE | libc::PROT_EXEC) as u64;

impl Agent {
    pub fn new(limits: Limits) -> Self {
        Self {
            comms: Slots::new(limits.max_comms),
            cgroups: Slots::new(limits.max_cgroups),
            cgroup_names: Names::new(),
            identities: vec![ContainerIdentity::default()],
            processes: ProcessTable::default(),
            syscalls: HashMap::new(),
            wx: HashMap::new(),
            faults: HashMap::new(),
            notable: Vec::new(),
            limits,
        }
    }

    pub fn comm_label(&self, slot: u16) -> &str {
        &self.comms.names[usize::from(slot)]
    }

    pub fn cgroup_label(&self, slot: u16) -> &str {
        &self.cgroups.names[usize::from(slot)]
    }

    pub fn identity(&self, slot: u16) -> &ContainerIdentity {
        &self.identities[usize::from(slot)]
    }

    fn who(&mut self, comm: &[u8; TASK_COMM_LEN], cgroup_id: u64) -> Who {
        let c = self.comms.slot(*comm, || c_str(comm).into_owned());
        let names = &mut self.cgroup_names;
        let g = self.cgroups.slot(cgroup_id, || {
            names
                .name(cgroup_id)
                .map_or_else(|| format!("cgroup id {cgroup_id}"), str::to_owned)
        });
        if usize::from(g) == self.identities.len() {
            let identity = container_identity(&self.cgroups.names[usize::from(g)]);
            self.identities.push(identity);
        }
        (c, g)
    }

    /// One decoded event: counted, and the model moved.
    pub fn note(&mut self, event: &Event) {
        let header = event.header();
        let (pid, comm, cgroup_id) = (header.pid, header.comm, header.cgroup_id);
        let who = self.who(&comm, cgroup_id);
        let what = match event {
            Event::Syscall(_) | Event::Mmap(_) => Some(What::Probed(event.probe() as u32)),
            Event::MmChange(c) => Some(match MmChangeCause::from_u32(c.cause) {
                Some(MmChangeCause::Syscall) => What::Syscall {
                    nr: c.nr,
                    compat: c.compat != 0,
                },
                Some(MmChangeCause::Fault) => What::Fault,
                _ => What::OtherTask,
            }),
            _ => None,
        };
        if let Some(what) = what {
            *self.syscalls.entry((what, who)).or_default() += 1;
        }
        if let Some(change) = event.lifecycle() {
            self.processes.apply(change);
        }
        match event {
            Event::Exec(_) => {
                let p = self.processes.entry(pid);
                // The new program's name and space.
                p.who = who;
                seed(pid, p);
            }
            Event::Syscall(_) | Event::Mmap(_) | Event::MmChange(_) => {
                let Some(call) = event.call() else { return };
                let path = event.mmap_file().and_then(FilePath::from_kernel);
                let p = self.process(pid, who);
                if !p.seeded {
                    seed(pid, p);
                }
                if !matches!(event, Event::MmChange(_)) {
                    self.note_mapping(event, who, path.as_ref());
                }
                let env = TracedFile(path.as_ref().map(|p| p.bytes.as_slice()));
                let p = self.processes.entry(pid);
                apply_syscall(&mut p.space, call.nr, call.args, call.ret, &env);
                p.dirty = true;
            }
            Event::Fault(_) => *self.faults.entry(who).or_default() += 1,
            Event::Rss(r) => {
                if let Some(i) = RssMember::ALL.iter().position(|m| *m as u32 == r.member) {
                    self.process(pid, who).resident[i] = r.bytes;
                }
            }
            _ => {}
        }
    }

    /// W+X, device and large mappings: counted, and kept for the OTLP logs.
    fn note_mapping(&mut self, event: &Event, who: Who, path: Option<&FilePath>) {
        let Some(e) = event.syscall() else { return };
        if is_error(e.ret) {
            return;
        }
        let probe = event.probe();
        let (addr, len, prot) = match probe {
            Probe::Mmap => (e.ret as u64, e.args[1], e.args[2]),
            Probe::Mprotect => (e.args[0], e.args[1], e.args[2]),
            _ => return,
        };
        let mut kinds = Vec::new();
        if prot & PROT_WX == PROT_WX {
            *self.wx.entry(who).or_default() += 1;
            kinds.push(NotableKind::WritableExecutable);
        }
        let device = path.filter(|p| is_device(&p.bytes));
        if probe == Probe::Mmap && device.is_some() {
            kinds.push(NotableKind::Device);
        }
        if probe == Probe::Mmap && len >= self.limits.large_bytes {
            kinds.push(NotableKind::Large);
        }
        for kind in kinds {
            // Bounded: the exporter takes them at each publish; past this they are
            // counted only.
            if self.notable.len() < MAX_NOTABLE {
                self.notable.push(Notable {
                    kind,
                    pid: e.header.pid,
                    comm: self.comm_label(who.0).to_owned(),
                    cgroup: self.cgroup_label(who.1).to_owned(),
                    addr,
                    len,
                    prot,
                    path: device
                        .map(|p| String::from_utf8_lossy(&p.bytes).into_owned())
                        .unwrap_or_default(),
                });
            }
        }
    }

    /// `pid`'s state; one labelled `who` if it had none.
    fn process(&mut self, pid: u32, who: Who) -> &mut ProcMemory {
        let fresh = self.processes.get(pid).is_none();
        let p = self.processes.entry(pid);
        if fresh {
            p.who = who;
        }
        p
    }

    /// A process is gone without its exit record (lost): its state goes.
    pub fn exited(&mut self, pid: u32) {
        self.processes.apply(Lifecycle::Exit { pid });
    }

    /// The pids with state.
    pub fn pids(&mut self) -> Vec<u32> {
        self.processes.iter_mut().map(|(pid, _)| pid).collect()
    }

    /// Live mapped bytes per (who, kind), and resident bytes per (who, member), over
    /// every live process.
    pub fn totals(&mut self) -> Totals {
        let mut totals = Totals::default();
        for (_, p) in self.processes.iter_mut() {
            if p.dirty {
                p.space.merge();
                p.mapped = mapped_by_kind(p.space.regions().iter());
                p.dirty = false;
            }
            let mapped = totals.mapped.entry(p.who).or_default();
            for (sum, v) in mapped.iter_mut().zip(p.mapped) {
                *sum += v;
            }
            let resident = totals.resident.entry(p.who).or_default();
            for (sum, v) in resident.iter_mut().zip(p.resident) {
                *sum += v;
            }
        }
        totals
    }
}

/// At most this many notable events wait for the exporter between two publishes.
const MAX_NOTABLE: usize = 4096;

#[derive(Default)]
pub struct Totals {
    pub mapped: HashMap<Who, [u64; KINDS.len()]>,
    pub resident: HashMap<Who, [i64; RssMember::ALL.len()]>,
}

/// The kernel's view, as the model's start (a process first seen, or just exec'd). A
/// process already gone keeps the events' view alone.
fn seed(pid: u32, p: &mut ProcMemory) {
    p.seeded = true;
    p.dirty = true;
    let Ok(view) = maps::read(pid) else { return };
    let start_brk = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .ok()
        .and_then(|s| s.start_brk)
        .unwrap_or(0);
    p.space = AddressSpace::from_kernel(view.regions, start_brk);
}

/// A character or block device's file, not shared memory under /dev.
fn is_device(path: &[u8]) -> bool {
    path.starts_with(b"/dev/")
        && !path.starts_with(b"/dev/shm/")
        && !path.starts_with(b"/dev/zero")
        && !path.starts_with(b"/dev/hugepages/")
}

/// Which of [`KINDS`] a region counts as (None: the kernel's own, like `[vdso]`).
pub fn kind(region: &Region) -> Option<usize> {
    Some(match &region.backing {
        Backing::Heap => HEAP,
        Backing::Stack => STACK,
        Backing::Anonymous if region.shared() => SHARED,
        Backing::Anonymous => ANON,
        Backing::Special(name) if name.as_bytes().starts_with(b"[anon") => {
            if region.shared() {
                SHARED
            } else {
                ANON
            }
        }
        Backing::Special(_) => return None,
        Backing::File(name) if is_device(name.as_bytes()) && !region.shared_anon() => DEVICE,
        Backing::File(_) if region.shared() => SHARED,
        Backing::File(_) => FILE,
    })
}

pub fn mapped_by_kind<'a>(regions: impl Iterator<Item = &'a Region>) -> [u64; KINDS.len()] {
    let mut sums = [0u64; KINDS.len()];
    for r in regions {
        if let Some(k) = kind(r) {
            sums[k] += r.len();
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::{test_event, test_syscall_event};
    use crate::space::Name;

    /// Above any pid_max: /proc has nothing, so the model is the events' alone.
    const PID: u32 = 4_000_000_000;

    fn call(probe: Probe, comm: &[u8], args: [u64; 6], ret: i64) -> Event {
        let mut e = test_syscall_event(probe, comm, args, ret);
        e.header.pid = PID;
        test_event(e, None)
    }

    fn agent(max_comms: usize) -> Agent {
        Agent::new(Limits {
            max_comms,
            max_cgroups: 4,
            large_bytes: 1 << 30,
        })
    }

    #[test]
    fn counts_calls_and_live_bytes_by_kind() {
        let mut a = agent(8);
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let shared = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
        let base = 0x7f00_0000_0000u64;
        a.note(&call(
            Probe::Mmap,
            b"w",
            [0, 0x4000, rw, anon, u64::MAX, 0],
            base as i64,
        ));
        a.note(&call(
            Probe::Mmap,
            b"w",
            [0, 0x2000, rw, shared, u64::MAX, 0],
            (base + 0x10_0000) as i64,
        ));
        a.note(&call(Probe::Munmap, b"w", [base, 0x1000, 0, 0, 0, 0], 0));
        // A failed call is a call, and changes nothing.
        a.note(&call(Probe::Munmap, b"w", [1, 0x1000, 0, 0, 0, 0], -22));
        a.note(&call(
            Probe::Mprotect,
            b"w",
            [base + 0x1000, 0x1000, rw | 4, 0, 0, 0],
            0,
        ));
        let who = (1, 1);
        assert_eq!(a.syscalls[&(What::Probed(Probe::Mmap as u32), who)], 2);
        assert_eq!(a.syscalls[&(What::Probed(Probe::Munmap as u32), who)], 2);
        assert_eq!(a.wx[&who], 1);
        let totals = a.totals();
        assert_eq!(totals.mapped[&who][ANON], 0x3000);
        assert_eq!(totals.mapped[&who][SHARED], 0x2000);
        a.exited(PID);
        assert!(a.totals().mapped.is_empty());
    }

    #[test]
    fn names_past_the_limit_count_as_other() {
        let mut a = agent(2);
        for comm in [&b"a"[..], b"b", b"c", b"d", b"a"] {
            a.note(&call(Probe::Brk, comm, [0; 6], 0x1000));
        }
        let by_comm = |name: &str| -> u64 {
            a.syscalls
                .iter()
                .filter(|((_, who), _)| a.comm_label(who.0) == name)
                .map(|(_, n)| n)
                .sum()
        };
        assert_eq!((by_comm("a"), by_comm("b"), by_comm(OTHER)), (2, 1, 2));
    }

    #[test]
    fn kinds_follow_the_maps_name_and_sharing() {
        let file = |name: &str, perms: &str| Region {
            backing: Backing::File(Name::from(name)),
            inode: 7,
            ..Region::anonymous(0, 0x1000, perms)
        };
        assert_eq!(kind(&file("/usr/lib/libc.so.6", "r-xp")), Some(FILE));
        assert_eq!(kind(&file("/dev/shm/x", "rw-s")), Some(SHARED));
        assert_eq!(kind(&file("/dev/zero (deleted)", "rw-s")), Some(SHARED));
        assert_eq!(kind(&file("/dev/hpet", "r--s")), Some(DEVICE));
        assert_eq!(kind(&Region::anonymous(0, 1, "rw-p")), Some(ANON));
        let special = |n: &str| Region {
            backing: Backing::Special(Name::from(n)),
            ..Region::anonymous(0, 1, "r-xp")
        };
        assert_eq!(kind(&special("[vdso]")), None);
        assert_eq!(kind(&special("[anon:x]")), Some(ANON));
    }
}
