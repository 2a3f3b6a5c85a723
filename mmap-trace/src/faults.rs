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

use std::collections::HashMap;

use mmap_trace_common::{MmChangeCause, Probe};

use crate::{
    kernel::decode::{Event, FilePath},
    output::json::{FaultVma, Hex},
    space::{AddressSpace, NoEnv, Region, TracedFile, apply_syscall, maps},
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

/// A process's resident memory of one type, from the rss probe's records.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resident {
    /// Bytes at the first and the last record, and the most seen.
    pub first: i64,
    pub last: i64,
    pub peak: i64,
}

#[derive(Debug, Default)]
pub struct Faults {
    processes: HashMap<u32, Process>,
    /// (pid, `RssMember`) → what its records said.
    pub resident: std::collections::BTreeMap<(u32, u32), Resident>,
    mappings: HashMap<(u32, u64, u64), MappingFaults>,
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
        match event {
            Event::Exec(_) => {
                let p = self.processes.entry(pid).or_default();
                p.model.exec();
                p.seeded = false;
            }
            Event::Fork(f) => {
                let child = match self.processes.get(&pid) {
                    Some(p) if p.seeded => Process {
                        model: p.model.fork_child(),
                        seeded: true,
                        refreshed_in: 0,
                    },
                    _ => Process::default(),
                };
                self.processes.insert(f.child_pid, child);
            }
            Event::MmChange(c)
                if c.cause == MmChangeCause::Syscall as u32 && c.compat == 0 && c.nr >= 0 =>
            {
                let p = self.processes.entry(pid).or_default();
                apply_syscall(&mut p.model, c.nr as u64, c.args, c.ret, &NoEnv);
            }
            Event::Syscall(_) | Event::Mmap(_) => {
                let e = event.syscall()?;
                let nr = match event.probe() {
                    Probe::Mmap => libc::SYS_mmap,
                    Probe::Munmap => libc::SYS_munmap,
                    Probe::Mprotect => libc::SYS_mprotect,
                    Probe::Mremap => libc::SYS_mremap,
                    _ => libc::SYS_brk,
                };
                let p = self.processes.entry(pid).or_default();
                let env = TracedFile(path.map(|p| p.bytes.as_slice()));
                apply_syscall(&mut p.model, nr as u64, e.args, e.ret, &env);
            }
            Event::Fault(f) => return self.fault(pid, f, event.header().ts_ns),
            Event::Rss(r) => {
                let bytes = r.bytes;
                self.resident
                    .entry((pid, r.member))
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
        let batch = self.batch;
        let p = self.processes.entry(pid).or_default();
        let unknown = p.model.region_at(f.address).is_none();
        if !p.seeded || (unknown && p.refreshed_in != batch) {
            // Only where the model has nothing: what the events said stays.
            if let Ok(view) = maps::read(pid) {
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
            .mappings
            .entry((pid, region.start, region.end))
            .or_insert_with(|| MappingFaults {
                pid,
                start: region.start,
                end: region.end,
                perms: region.perms.clone(),
                name: name(region),
                faults: 0,
                writes: 0,
                present: 0,
                first_ns: ts_ns,
            });
        row.faults += 1;
        row.writes += u64::from(f.error_code & mmap_trace_common::pf::WRITE != 0);
        row.present += u64::from(f.error_code & mmap_trace_common::pf::PROT != 0);
        Some(FaultVma {
            start: Hex(region.start),
            end: Hex(region.end),
            perms: region.perms.clone(),
            name: String::from_utf8_lossy(&row.name).into_owned(),
        })
    }

    /// Every mapping that faulted, most faults first.
    pub fn by_faults(&self) -> Vec<MappingFaults> {
        let mut rows: Vec<MappingFaults> = self.mappings.values().cloned().collect();
        rows.sort_by(|a, b| {
            b.faults
                .cmp(&a.faults)
                .then(a.pid.cmp(&b.pid))
                .then(a.start.cmp(&b.start))
        });
        rows
    }
}

/// maps' name column for a region, as bytes.
fn name(region: &Region) -> Vec<u8> {
    region.backing.to_string().into_bytes()
}
