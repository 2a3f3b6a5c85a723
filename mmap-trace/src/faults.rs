//! `trace --faults`: each page fault attributed to the mapping it hit, by the address-space
//! model verify and report use (`crate::space`), fed with the trace's own events; and the
//! count per mapping for the summary.
//!
//! The model starts from /proc/<pid>/maps the first time a process faults (and again
//! after its exec): what exec mapped (the binary, ld.so, the stack, the vDSO) and what a
//! `--pid` target mapped before the probes attached reach no probe. From then on the
//! traced calls move it. A fault at an address the model has no mapping for re-reads maps
//! (once per drained batch and process) before it is called unattributed: a mapping the
//! probes could not see (another task's change, a kernel probe missing).

use std::collections::{BTreeMap, HashMap};

use crate::{
    kernel::decode::{Event, FilePath},
    schema::{FaultVma, Hex},
    space::{
        AddressSpace, Lifecycle, NoEnv, ProcessState, ProcessTable, Region, TracedFile,
        apply_syscall, maps,
    },
};

/// One mapping's faults: the range is the model's at the first fault there (a later
/// split or merge makes a new row).
#[derive(Clone, Debug)]
pub struct MappingFaults {
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub perms: String,
    /// maps' name column (empty for anonymous memory).
    pub name: Vec<u8>,
    pub faults: u64,
    /// Of them, write faults and faults on present pages (copy-on-write, protection).
    pub writes: u64,
    pub present: u64,
    /// Of them, faults that needed I/O (the kernel's major faults), as the thread's next
    /// fault shows (its `maj_flt` grew); a thread's last fault is not judged.
    pub major: u64,
    /// CLOCK_MONOTONIC ns of the first fault.
    pub first_ns: u64,
}

#[derive(Debug, Default)]
struct Process {
    model: AddressSpace,
    /// The model holds the kernel's view from some point on (maps read since the exec).
    seeded: bool,
    /// The batch in which maps was last read for an unknown address.
    refreshed_in: u64,
}

/// A forked child starts from its parent's model (once the parent's was seeded); exec
/// makes the model read maps again.
impl ProcessState for Process {
    fn fork_child(&self) -> Self {
        if !self.seeded {
            return Process::default();
        }
        Process {
            model: self.model.fork_child(),
            seeded: true,
            refreshed_in: 0,
        }
    }

    fn exec(&mut self) {
        self.model.exec();
        self.seeded = false;
    }
}

/// A mapping as one process's faults count it: (start, end).
type MappingKey = (u64, u64);

/// A process's resident memory of one type, from the rss probe's records.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resident {
    /// Bytes at the first and the last record, and the most seen.
    pub first: i64,
    pub last: i64,
    pub peak: i64,
}

/// What one process's own faults and rss records counted (a vfork child's faults are
/// its own even while it uses its parent's model).
#[derive(Debug, Default)]
struct Counted {
    mappings: HashMap<MappingKey, MappingFaults>,
    /// Per thread: its last fault's `maj_flt` and the mapping it was counted in.
    last_fault: HashMap<u32, (u64, Option<MappingKey>)>,
    /// `RssMember` → what its records said.
    resident: BTreeMap<u32, Resident>,
}

/// Rows of exited processes kept for the summary; past twice this many the fewest-faults
/// rows (and the smallest-peak resident rows) are dropped and only counted, so a
/// system-wide trace that outlives thousands of processes keeps bounded memory.
pub const EXITED_ROWS_KEPT: usize = 4096;

/// The summary's rows of processes that exited, bounded by [`EXITED_ROWS_KEPT`].
#[derive(Debug, Default)]
struct Exited {
    mappings: Vec<MappingFaults>,
    resident: Vec<(u32, u32, Resident)>,
    /// Dropped mapping rows, and the faults they held.
    mappings_dropped: u64,
    faults_dropped: u64,
    resident_dropped: u64,
}

impl Exited {
    fn keep(&mut self, pid: u32, counted: Counted) {
        self.mappings.extend(counted.mappings.into_values());
        self.resident
            .extend(counted.resident.into_iter().map(|(m, r)| (pid, m, r)));
        if self.mappings.len() > 2 * EXITED_ROWS_KEPT {
            self.mappings
                .sort_unstable_by_key(|row| std::cmp::Reverse(row.faults));
            for row in self.mappings.drain(EXITED_ROWS_KEPT..) {
                self.mappings_dropped += 1;
                self.faults_dropped += row.faults;
            }
        }
        if self.resident.len() > 2 * EXITED_ROWS_KEPT {
            self.resident
                .sort_unstable_by_key(|row| std::cmp::Reverse(row.2.peak));
            self.resident_dropped += (self.resident.len() - EXITED_ROWS_KEPT) as u64;
            self.resident.truncate(EXITED_ROWS_KEPT);
        }
    }
}

#[derive(Debug, Default)]
pub struct Faults {
    /// The model per process, under the one fork/exec/exit rule.
    processes: ProcessTable<Process>,
    /// What each living process counted, by its own pid.
    counted: HashMap<u32, Counted>,
    exited: Exited,
    /// Faults at addresses no mapping held (bad accesses, or a change nobody reported).
    pub unattributed: u64,
    batch: u64,
}

impl Faults {
    /// A new drained batch: an unknown address may read maps once more.
    pub fn new_batch(&mut self) {
        self.batch += 1;
    }

    /// Moves the model with `event`; for a fault, the mapping it hit (None: none known).
    pub fn note(&mut self, event: &Event, path: Option<&FilePath>) -> Option<FaultVma> {
        let pid = event.header().pid;
        if let Some(change) = event.lifecycle() {
            self.processes.apply(change);
            if let Lifecycle::Exit { pid } = change
                && let Some(counted) = self.counted.remove(&pid)
            {
                self.exited.keep(pid, counted);
            }
            return None;
        }
        match event {
            Event::MmChange(_) | Event::Syscall(_) | Event::Mmap(_) => {
                let call = event.call()?;
                let env: &dyn crate::space::CallEnv = match event {
                    Event::MmChange(_) => &NoEnv,
                    _ => &TracedFile(path.map(|p| p.bytes.as_slice())),
                };
                apply_syscall(
                    &mut self.processes.entry(pid).model,
                    call.nr,
                    call.args,
                    call.ret,
                    env,
                );
            }
            Event::Fault(f) => return self.fault(pid, f, event.header().ts_ns),
            Event::Rss(r) => {
                let bytes = r.bytes;
                self.counted
                    .entry(pid)
                    .or_default()
                    .resident
                    .entry(r.member)
                    .and_modify(|res| {
                        res.last = bytes;
                        res.peak = res.peak.max(bytes);
                    })
                    .or_insert(Resident {
                        first: bytes,
                        last: bytes,
                        peak: bytes,
                    });
            }
            _ => {}
        }
        None
    }

    fn fault(
        &mut self,
        pid: u32,
        f: &mmap_trace_common::FaultEvent,
        ts_ns: u64,
    ) -> Option<FaultVma> {
        let tid = f.header.tid;
        let counted = self.counted.entry(pid).or_default();
        // The thread's previous fault needed I/O if its count of those grew since.
        if let Some((maj_flt, Some(key))) = counted.last_fault.get(&tid)
            && f.maj_flt > *maj_flt
            && let Some(row) = counted.mappings.get_mut(key)
        {
            row.major += 1;
        }
        let vma = self.attribute(pid, f, ts_ns);
        let key = vma.as_ref().map(|v| (v.start.0, v.end.0));
        if let Some(counted) = self.counted.get_mut(&pid) {
            counted.last_fault.insert(tid, (f.maj_flt, key));
        }
        vma
    }

    fn attribute(
        &mut self,
        pid: u32,
        f: &mmap_trace_common::FaultEvent,
        ts_ns: u64,
    ) -> Option<FaultVma> {
        let batch = self.batch;
        let owner = self.processes.owner(pid);
        let p = self.processes.entry(pid);
        let unknown = p.model.region_at(f.address).is_none();
        if !p.seeded || (unknown && p.refreshed_in != batch) {
            // Only where the model has nothing: what the events said stays.
            if let Ok(view) = maps::read(owner) {
                for region in view.regions {
                    p.model.fill(region);
                }
            }
            p.seeded = true;
            p.refreshed_in = batch;
        }
        let Some(region) = p.model.region_at(f.address) else {
            self.unattributed += 1;
            return None;
        };
        let row = self
            .counted
            .entry(pid)
            .or_default()
            .mappings
            .entry((region.start, region.end))
            .or_insert_with(|| MappingFaults {
                pid,
                start: region.start,
                end: region.end,
                perms: region.perms.clone(),
                name: name(region),
                faults: 0,
                writes: 0,
                present: 0,
                major: 0,
                first_ns: ts_ns,
            });
        row.faults += 1;
        let known = f.error_code & mmap_trace_common::pf::ACCESS_UNKNOWN == 0;
        row.writes += u64::from(known && f.error_code & mmap_trace_common::pf::WRITE != 0);
        row.present += u64::from(known && f.error_code & mmap_trace_common::pf::PROT != 0);
        Some(FaultVma {
            start: Hex(region.start),
            end: Hex(region.end),
            perms: region.perms.clone(),
            name: String::from_utf8_lossy(&row.name).into_owned(),
        })
    }

    /// Every mapping that faulted (of exited processes, the most-faulted kept), most
    /// faults first.
    pub fn by_faults(&self) -> Vec<MappingFaults> {
        let mut rows: Vec<MappingFaults> = self
            .counted
            .values()
            .flat_map(|c| c.mappings.values())
            .chain(&self.exited.mappings)
            .cloned()
            .collect();
        rows.sort_by(|a, b| {
            b.faults
                .cmp(&a.faults)
                .then(a.pid.cmp(&b.pid))
                .then(a.start.cmp(&b.start))
        });
        rows
    }

    /// Resident memory per (pid, `RssMember`), living and exited processes, by pid.
    pub fn resident(&self) -> Vec<(u32, u32, Resident)> {
        let mut rows: Vec<(u32, u32, Resident)> = self
            .counted
            .iter()
            .flat_map(|(&pid, c)| c.resident.iter().map(move |(&m, &r)| (pid, m, r)))
            .chain(self.exited.resident.iter().copied())
            .collect();
        rows.sort_by_key(|&(pid, member, _)| (pid, member));
        rows
    }

    /// Rows of exited processes dropped past the bound: (mapping rows, their faults,
    /// resident rows).
    pub fn dropped(&self) -> (u64, u64, u64) {
        let e = &self.exited;
        (e.mappings_dropped, e.faults_dropped, e.resident_dropped)
    }
}

/// maps' name column for a region, as bytes.
fn name(region: &Region) -> Vec<u8> {
    region.backing.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use mmap_trace_common::{EventHeader, EventKind, ExecEvent, FaultEvent, Probe, pf};

    use super::*;
    use crate::kernel::decode::{test_event, test_syscall_event};

    /// Above any pid_max: /proc has no maps for it, so the model is the events' alone.
    const PID: u32 = 4_000_000_000;
    const RW: u64 = 3;
    const ANON: u64 = 0x22;

    fn header(kind: EventKind, probe: Probe, ts_ns: u64) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            probe: probe as u32,
            pid: PID,
            tid: PID,
            ts_ns,
            comm: [0; mmap_trace_common::TASK_COMM_LEN],
            cgroup_id: 1,
        }
    }

    fn call(probe: Probe, args: [u64; 6], ret: i64) -> Event {
        let mut e = test_syscall_event(probe, b"t", args, ret);
        e.header.pid = PID;
        test_event(e, None)
    }

    fn fault(address: u64, error_code: u64, ts_ns: u64) -> Event {
        fault_of(PID, address, error_code, ts_ns, 0)
    }

    fn fault_of(tid: u32, address: u64, error_code: u64, ts_ns: u64, maj_flt: u64) -> Event {
        let mut header = header(EventKind::Fault, Probe::Fault, ts_ns);
        header.tid = tid;
        Event::Fault(FaultEvent {
            header,
            address,
            ip: 0x40_1000,
            error_code,
            in_kernel: 0,
            _pad: 0,
            maj_flt,
        })
    }

    fn start(v: &Option<FaultVma>) -> Option<u64> {
        v.as_ref().map(|v| v.start.0)
    }

    #[test]
    fn faults_go_to_the_mapping_the_calls_made() {
        let mut f = Faults::default();
        let a = 0x7f00_0000_0000u64;
        let b = a + 0x10_0000;
        f.note(
            &call(Probe::Mmap, [0, 0x4000, RW, ANON, u64::MAX, 0], a as i64),
            None,
        );
        f.note(
            &call(Probe::Mmap, [0, 0x2000, RW, ANON, u64::MAX, 0], b as i64),
            None,
        );
        let w = pf::WRITE | pf::USER;
        assert_eq!(start(&f.note(&fault(a + 0x1234, w, 10), None)), Some(a));
        assert_eq!(start(&f.note(&fault(a + 0x3fff, w, 11), None)), Some(a));
        assert_eq!(start(&f.note(&fault(b, pf::USER, 12), None)), Some(b));
        assert_eq!(start(&f.note(&fault(b, w | pf::PROT, 13), None)), Some(b));
        // Past the end, then after the munmap: no mapping.
        assert_eq!(start(&f.note(&fault(a + 0x4000, w, 14), None)), None);
        f.note(&call(Probe::Munmap, [b, 0x2000, 0, 0, 0, 0], 0), None);
        assert_eq!(start(&f.note(&fault(b, w, 15), None)), None);
        assert_eq!(f.unattributed, 2);
        let rows = f.by_faults();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].start,
                rows[0].end,
                rows[0].faults,
                rows[0].writes,
                rows[0].first_ns
            ),
            (a, a + 0x4000, 2, 2, 10)
        );
        assert_eq!(
            (
                rows[1].start,
                rows[1].faults,
                rows[1].writes,
                rows[1].present
            ),
            (b, 2, 1, 1)
        );
        assert_eq!(rows[0].perms, "rw-p");
    }

    #[test]
    fn a_split_mapping_counts_its_pieces_apart_and_exec_forgets_everything() {
        let mut f = Faults::default();
        let a = 0x7f00_0000_0000u64;
        f.note(
            &call(Probe::Mmap, [0, 0x3000, RW, ANON, u64::MAX, 0], a as i64),
            None,
        );
        f.note(
            &call(Probe::Mprotect, [a + 0x1000, 0x1000, 1, 0, 0, 0], 0),
            None,
        );
        let vma = f.note(&fault(a + 0x1800, 0, 20), None).unwrap();
        assert_eq!(
            (vma.start.0, vma.end.0, vma.perms.as_str()),
            (a + 0x1000, a + 0x2000, "r--p")
        );
        let vma = f.note(&fault(a + 0x2800, pf::WRITE, 21), None).unwrap();
        assert_eq!((vma.start.0, vma.end.0), (a + 0x2000, a + 0x3000));
        f.note(
            &Event::Exec(ExecEvent {
                header: header(EventKind::Exec, Probe::Exec, 22),
            }),
            None,
        );
        assert_eq!(start(&f.note(&fault(a, pf::WRITE, 23), None)), None);
    }

    /// A fault needed I/O when its thread's next fault shows `maj_flt` grown; other
    /// threads' counts say nothing of it; a thread's last fault is not judged.
    #[test]
    fn major_faults_show_at_the_threads_next_fault() {
        let mut f = Faults::default();
        let a = 0x7f00_0000_0000u64;
        f.note(
            &call(Probe::Mmap, [0, 0x4000, 1, 0x22, u64::MAX, 0], a as i64),
            None,
        );
        for (tid, addr, maj) in [
            (1, a, 5),
            (2, a + 0x1000, 0),
            (1, a + 0x2000, 6),
            (2, a + 0x3000, 0),
            (1, a + 0x3000, 6),
        ] {
            f.note(&fault_of(tid, addr, 0, 1, maj), None);
        }
        let rows = f.by_faults();
        assert_eq!((rows[0].faults, rows[0].major), (5, 1));
    }

    #[test]
    fn resident_keeps_first_last_and_peak() {
        let mut f = Faults::default();
        for (ts, bytes) in [(1, 4096i64), (2, 1 << 20), (3, 512 << 10)] {
            f.note(
                &Event::Rss(mmap_trace_common::RssEvent {
                    header: header(EventKind::Rss, Probe::Rss, ts),
                    member: 1,
                    _pad: 0,
                    bytes,
                }),
                None,
            );
        }
        let (_, _, r) = f.resident()[0];
        assert_eq!((r.first, r.last, r.peak), (4096, 512 << 10, 1 << 20));
    }
}
