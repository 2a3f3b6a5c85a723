//! `mmap-trace verify`: replay the traced events into a shadow address space and compare
//! it with /proc/<pid>/maps after every event.
//!
//! The comparison needs the process to hold still: with `stop_after_event` set, the
//! syscall and exec probes send the process SIGSTOP as the call returns. Userspace waits
//! until every thread is stopped, drains the ring buffer (each call that completed has
//! submitted its event by then), applies the events, compares, and sends SIGCONT.
//!
//! Owns the shadow per process, the checkpoints, the page checks (`pages`) and
//! `verify-driver` (`driver`). May not touch: the address-space rules (space/ owns them,
//! for report too), or how records are written (its records are the schema's; output
//! writes them).

pub mod driver;
mod order;
mod pages;
pub mod shadow;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use mmap_trace_common::{MmChangeCause, MmChangeEvent, Probe, SyscallEvent};
use tokio::io::unix::AsyncFd;

use crate::{
    kernel::decode::{self, Event, is_error},
    kernel::loader::LoadOptions,
    output::{Format, Output, Summary, ignore_closed_output},
    process::hold::{Holder, Notice},
    process::session::{Session, StopSignals, Target, monotonic_ns, runtime},
    schema::{AdoptedRange, Hex, MismatchRecord, ProcessRecord, UnmodelledRecord, VerifyStats},
    space::{self, Applied, Comparison, Field, ProcEnv, Region},
    verify::shadow::{Difference, ShadowSpace},
};

/// Self-test: doctor one input so the checks must fail (hidden flag; used by the tests
/// that prove a mismatch is caught).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Plant {
    /// Drop the write bit of the first writable region of every maps snapshot.
    MapsPerms,
    /// Add one to every PFN the page_cache events report.
    PfnOffByOne,
    /// Treat shmat and shmdt as calls the shadow does not model: the catch-all, not the
    /// model, must then account for them (an `unmodelled` record naming them).
    UnmodelShm,
}

pub struct VerifyConfig {
    pub target: Target,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub load: LoadOptions,
    pub plant: Option<Plant>,
    /// PFN-check every known page at every checkpoint (self-tests), not only those that
    /// could have changed.
    pub full: bool,
}

/// One verified process.
#[derive(Default)]
struct Proc {
    shadow: Option<ShadowSpace>,
    /// A vfork (CLONE_VM) child: its changes are this process's address space until it
    /// execs.
    shares_with: Option<u32>,
    parent: Option<u32>,
    stats: VerifyStats,
    /// Causes the shadow does not model, seen since the last checkpoint.
    unmodelled: Vec<String>,
    ended: Option<String>,
}

struct Verifier {
    procs: BTreeMap<u32, Proc>,
    plant: Option<Plant>,
    /// File pages against pagemap, per address space (verify/pages.rs).
    pages: HashMap<u32, pages::PageChecks>,
    full: bool,
    /// Records that did not decode: events the proof lost.
    malformed: u64,
}

/// Returns whether the kernel agreed with the events at every checkpoint.
pub fn run(config: VerifyConfig) -> Result<bool> {
    if matches!(config.target, Target::All | Target::Comm(_)) {
        bail!("verify needs one process: give --pid PID or -- CMD [ARGS…]");
    }
    let mut load = config.load;
    load.filter.stop_after_event = 1;
    let follow = load.filter.follow_forks != 0;
    if load.requested.is_none() {
        let mut probes = crate::kernel::loader::default_probes();
        probes.push(Probe::PageCache);
        // Asked for implicitly: where the kernel lacks kprobes, skip those with a note.
        load.implicit = true;
        load.requested = Some(probes);
    }
    let requested = load.requested.as_deref().unwrap_or_default();
    if matches!(config.target, Target::Command(_)) && !requested.contains(&Probe::Exec) {
        bail!(
            "verify -- CMD needs the exec probe: the shadow starts from the command's maps at its exec; add exec to --probes"
        );
    }
    let catch_all = requested.contains(&Probe::MmLock);
    let runtime = runtime()?;
    let StopSignals {
        mut sigint,
        mut sigterm,
    } = StopSignals::install(&runtime)?;
    let mut sigchld = {
        let _context = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .context("catching SIGCHLD")?
    };
    // Before attaching: a bad path must not leave a command running untraced.
    let sink = crate::output::open(config.output.as_deref())?;
    let mut holder = Holder::new(follow);
    let session = Session::start("verify", &config.target, load, Some(&mut holder))?;
    let mut out = Output::new(config.format, sink, session.start_ns);
    let Session {
        tracer,
        ring,
        child,
        pid,
        start_ns,
        ..
    } = session;
    let pid = pid.context("verify needs one process")?;
    if catch_all && !tracer.attached.contains(&Probe::MmLock) {
        eprintln!(
            "mmap-trace: warning: the catch-all (mm_lock) is not attached: changes made by calls other than mmap, munmap, mprotect, mremap and brk, by faults or by other tasks are not seen"
        );
    }
    let mut verifier = Verifier {
        procs: BTreeMap::new(),
        plant: config.plant,
        pages: HashMap::new(),
        full: config.full,
        malformed: 0,
    };
    verifier.procs.insert(pid, Proc::default());
    if child.is_none() {
        // A running process: seed from its maps while it holds still.
        if holder.stop_process(pid, &[])? {
            verifier.seed(pid)?;
        }
        holder.resume_process(pid);
    }
    let ended = runtime.block_on(async {
        // SAFETY: the AsyncFd owns the ring buffer's descriptor while registered.
        let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        let ended = loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    guard.clear_ready();
                }
                _ = sigchld.recv() => {}
                _ = sigint.recv() => break "SIGINT".to_string(),
                _ = sigterm.recv() => break "SIGTERM".to_string(),
            }
            for notice in holder.poll()? {
                verifier.notice(notice);
            }
            verifier.checkpoint(&mut holder, ring.get_mut(), &mut out)?;
            // Exits seen while holding processes for the checkpoint.
            for notice in holder.poll()? {
                verifier.notice(notice);
            }
            if holder.is_empty() || (!follow && !holder.is_traced(pid)) {
                let status = verifier
                    .procs
                    .get(&pid)
                    .and_then(|p| p.ended.clone())
                    .unwrap_or_else(|| "status unknown".into());
                break match child {
                    Some(_) => format!("command exited ({status})"),
                    None => "target process exited".to_string(),
                };
            }
        };
        // Events of the last calls before exit: logged, not compared (nothing to compare with).
        let tail = decode::drain_all(ring.get_mut(), &mut verifier.malformed);
        for event in &tail {
            out.event(event, crate::process::paths::kernel_path(event))
                .or_else(ignore_closed_output)?;
        }
        anyhow::Ok(ended)
    })?;
    tracer.flush_logs();

    let mut stats = VerifyStats::default();
    for (p, checks) in &verifier.pages {
        if let Some(proc) = verifier.procs.get_mut(p) {
            proc.stats.add_page_checks(&checks.stats);
        }
    }
    for (&p, proc) in &verifier.procs {
        stats.add(&proc.stats);
        let ended = proc.ended.as_deref().unwrap_or("still running");
        let record = ProcessRecord {
            pid: p,
            parent: proc.parent,
            stats: proc.stats,
            ended: ended.into(),
        };
        out.record(&record).or_else(ignore_closed_output)?;
        eprintln!(
            "mmap-trace: verify: pid {p}{}: {} checkpoints, {} mismatches, {} unmodelled changes adopted, {} page PFNs checked ({ended})",
            proc.parent
                .map(|pp| format!(" (child of {pp})"))
                .unwrap_or_default(),
            proc.stats.checkpoints,
            proc.stats.mismatches,
            proc.stats.unmodelled,
            proc.stats.pfn_checks,
        );
    }
    stats.processes = verifier.procs.len() as u64;
    let mut summary = Summary {
        attached: tracer.attached.clone(),
        duration_ns: monotonic_ns().saturating_sub(start_ns),
        events: out.counts,
        lost: tracer.lost()?,
        ended,
        ..Summary::default()
    };
    // Runs of a program the kernel skipped (a preemptible hook re-entered on one CPU)
    // lose events without touching the ring buffer: they break the proof just the same.
    let skipped: u64 = tracer.skipped_runs().iter().map(|(_, n)| n).sum();
    summary.malformed = verifier.malformed;
    let lost: u64 = summary.lost.iter().sum::<u64>() + skipped + verifier.malformed;
    summary.verify = Some(stats);
    out.summary(&summary)
        .and_then(|()| out.flush())
        .or_else(ignore_closed_output)?;
    // Nothing checked is not a pass: the user asked for proof and got none.
    let agreed = stats.mismatches == 0 && lost == 0 && stats.checkpoints > 0;
    eprintln!(
        "mmap-trace: verify: {} processes, {} checkpoints, {} mismatches, {} unmodelled changes adopted, {} page PFNs checked, {lost} events lost: {}",
        stats.processes,
        stats.checkpoints,
        stats.mismatches,
        stats.unmodelled,
        stats.pfn_checks,
        if agreed { "PASS" } else { "FAIL" }
    );
    if lost > 0 {
        eprintln!(
            "mmap-trace: events were lost, so the shadow is incomplete; rerun with a larger --ring-buffer-kib"
        );
    }
    if stats.checkpoints == 0 {
        eprintln!(
            "mmap-trace: nothing was checked: the target made no traced call while verify ran"
        );
    }
    Ok(agreed)
}

/// Whether the probe that wrote `event` stopped its thread (verify waits for that stop
/// rather than interrupting the thread).
fn stops_thread(event: &Event) -> bool {
    match event {
        Event::Syscall(_) | Event::Mmap(_) | Event::Exec(_) => true,
        Event::MmChange(c) => c.cause != MmChangeCause::Kernel as u32,
        _ => false,
    }
}

impl Verifier {
    fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::NewProcess { parent, child } => {
                self.procs
                    .entry(child)
                    .or_default()
                    .parent
                    .get_or_insert(parent);
            }
            Notice::Exited { pid, status } => {
                self.procs.entry(pid).or_default().ended = Some(status);
            }
        }
    }

    /// The process whose shadow `pid`'s changes go to (a vfork child's parent).
    fn owner(&self, pid: u32) -> u32 {
        let mut p = pid;
        for _ in 0..64 {
            match self.procs.get(&p).and_then(|x| x.shares_with) {
                Some(up) => p = up,
                None => break,
            }
        }
        p
    }

    fn checkpoint(
        &mut self,
        holder: &mut Holder,
        ring: &mut RingBuf<MapData>,
        out: &mut Output,
    ) -> Result<()> {
        let mut events = decode::drain_all(ring, &mut self.malformed);
        let waiting = holder.waiting();
        if events.is_empty() && waiting.is_empty() {
            return Ok(());
        }
        let mut pids: BTreeSet<u32> = waiting.into_iter().collect();
        let mut expect = Vec::new();
        for e in &events {
            pids.insert(e.header().pid);
            // A vfork child's changes are its parent's space: hold (and read) the parent.
            pids.insert(self.owner(e.header().pid));
            if let Event::Fork(f) = e {
                pids.insert(f.child_pid);
            }
            if stops_thread(e) {
                expect.push(e.header().tid);
            }
        }
        let mut alive = BTreeSet::new();
        for &p in &pids {
            if holder.is_traced(p) && holder.stop_process(p, &expect)? {
                alive.insert(p);
            }
        }
        events.extend(decode::drain_all(ring, &mut self.malformed));
        for event in &events {
            out.event(event, crate::process::paths::kernel_path(event))
                .or_else(ignore_closed_output)?;
        }
        // Partitions by address space, in order of first appearance (a parent's fork
        // comes before its child's first event).
        let mut order: Vec<u32> = Vec::new();
        let mut batches: HashMap<u32, Vec<Event>> = HashMap::new();
        for event in &events {
            // Shares are settled as events arrive: a vfork child belongs to its parent's
            // space until its exec.
            let owner = match event {
                Event::Exec(_) => event.header().pid,
                _ => self.owner(event.header().pid),
            };
            if !batches.contains_key(&owner) {
                order.push(owner);
            }
            batches.entry(owner).or_default().push(*event);
            if let Event::Fork(f) = event
                && f.shares_mm != 0
            {
                self.procs.entry(f.child_pid).or_default().shares_with = Some(f.header.pid);
            }
        }
        for p in alive.iter().map(|&p| self.owner(p)) {
            if !order.contains(&p) {
                order.push(p);
            }
        }
        for owner in order {
            let batch = batches.remove(&owner).unwrap_or_default();
            // The live process to read the kernel's view from: the owner, or a vfork
            // child that shares its mm.
            // The kernel's view is read from the owner itself, never from a vfork child
            // that shares its mm: mid-exec, the child's maps are already its new image
            // (the 6.12 guest caught this with the exec's mmap_region events).
            let reader = alive.contains(&owner).then_some(owner);
            match reader {
                Some(reader) => self.apply_and_compare(owner, reader, &batch, out)?,
                None => {
                    for event in &batch {
                        self.apply(event)?;
                    }
                }
            }
        }
        for p in pids {
            holder.resume_process(p);
        }
        Ok(())
    }

    /// Calls of different threads that overlap in time reach sys_exit in an order that
    /// need not be the one in which they changed the address space (mmap_lock decides).
    /// The batch is applied in exit order first and, if the kernel disagrees, in each
    /// other order that keeps every thread's own order and real time (a call that exited
    /// before another entered stays first). A mismatch is reported only when no such
    /// order explains the kernel's view, and then as the exit order shows it.
    fn apply_and_compare(
        &mut self,
        owner: u32,
        reader: u32,
        events: &[Event],
        out: &mut Output,
    ) -> Result<()> {
        let units = order::units(events);
        let base = self.procs.get(&owner).and_then(|p| p.shadow.clone());
        let base_unmodelled = self
            .procs
            .get(&owner)
            .map(|p| p.unmodelled.len())
            .unwrap_or(0);
        let mut first_failure = None;
        let mut pfns = None;
        for order in order::serial_orders(&units) {
            if let Some(p) = self.procs.get_mut(&owner) {
                p.shadow = base.clone();
                p.unmodelled.truncate(base_unmodelled);
            }
            for &u in &order {
                for event in &units[u].events {
                    self.apply(event)?;
                }
            }
            let proc = self.procs.entry(owner).or_default();
            if proc.shadow.is_none() {
                if proc.parent.is_some() && events.is_empty() {
                    // A child whose fork record is missing: start from its maps.
                    self.seed(owner)?;
                }
                return Ok(()); // before the command's exec: nothing to compare yet
            }
            let check = self.differences(owner, reader, &mut pfns)?;
            let proc = self.procs.entry(owner).or_default();
            if check.agrees() {
                proc.stats.checkpoints += 1;
                proc.unmodelled.clear();
                let last = events.last().copied();
                return self.report_pages(owner, pfns.unwrap_or_default(), last.as_ref(), out);
            }
            if first_failure.is_none() {
                first_failure = Some((check, proc.shadow.clone(), proc.unmodelled.clone()));
            }
        }
        let Some((check, shadow, unmodelled)) = first_failure else {
            return Ok(());
        };
        let proc = self.procs.entry(owner).or_default();
        proc.shadow = shadow;
        proc.stats.checkpoints += 1;
        proc.unmodelled = unmodelled;
        let last = events.last().copied();
        self.report_pages(owner, pfns.unwrap_or_default(), last.as_ref(), out)?;
        self.report_all(owner, check, last.as_ref(), out)
    }

    fn seed(&mut self, pid: u32) -> Result<()> {
        let stat = procfs::process::Process::new(pid as i32)
            .and_then(|p| p.stat())
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        let view = space::maps::read(pid)?;
        for u in &view.unparsed {
            eprintln!(
                "mmap-trace: warning: pid {pid}: /proc/{pid}/maps line {} could not be read ({}): {}; the shadow starts without it",
                u.line, u.reason, u.text
            );
        }
        let shadow = ShadowSpace::seed(view.regions, stat.start_brk.unwrap_or(0));
        let proc = self.procs.entry(pid).or_default();
        proc.shadow = Some(shadow);
        proc.shares_with = None;
        Ok(())
    }

    fn page_checks(&mut self, owner: u32) -> &mut pages::PageChecks {
        let (full, plant) = (self.full, self.plant == Some(Plant::PfnOffByOne));
        self.pages
            .entry(owner)
            .or_insert_with(|| pages::PageChecks::new(full, plant))
    }

    fn apply(&mut self, event: &Event) -> Result<()> {
        let pid = event.header().pid;
        if let Event::PageCache(_) = event {
            // The page cache is shared: every process may map the page.
            self.page_checks(pid);
            for checks in self.pages.values_mut() {
                checks.record(event);
            }
            return Ok(());
        }
        if let Event::Exec(_) = event {
            self.page_checks(pid).record(event);
            return self.seed(pid);
        }
        let owner = self.owner(pid);
        match event {
            // Anything may have changed where a cause the model does not name ran.
            Event::MmChange(_) => self.page_checks(owner).touch_all(),
            _ => self.page_checks(owner).record(event),
        }
        if let Event::Fork(f) = event {
            if f.shares_mm == 0 {
                let inherited = self.page_checks(owner).fork();
                self.pages.insert(f.child_pid, inherited);
            }
            // The child starts as the parent is at the fork (a vfork child shares it).
            let inherited = self
                .procs
                .get(&owner)
                .and_then(|p| p.shadow.as_ref())
                .map(ShadowSpace::fork_child);
            let child = self.procs.entry(f.child_pid).or_default();
            child.parent.get_or_insert(pid);
            if f.shares_mm != 0 {
                child.shares_with = Some(pid);
            } else {
                child.shadow = inherited;
            }
            return Ok(());
        }
        let Some(proc) = self.procs.get_mut(&owner) else {
            return Ok(());
        };
        let Some(shadow) = proc.shadow.as_mut() else {
            return Ok(()); // before the command's exec: its pre-exec image is ours
        };
        let plant = self.plant;
        let cause = match event {
            Event::Syscall(e) => apply_call(shadow, e, pid),
            Event::Mmap(e) => apply_call(shadow, &e.call, pid),
            Event::RemapPfn(e) => {
                shadow
                    .space_mut()
                    .remap_pfn_range(e.vma.vm_start, e.vma.vm_flags, e.pfn);
                None
            }
            Event::MmChange(c) => apply_change(shadow, c, pid, plant),
            _ => None,
        };
        proc.unmodelled.extend(cause);
        Ok(())
    }

    /// The kernel's view now (read from `reader`), how `owner`'s shadow differs from it,
    /// and how many page PFNs were compared. A fault's checkpoint first lets the shadow
    /// grow its stacks and MAP_GROWSDOWN mappings to what the kernel shows.
    fn differences(
        &mut self,
        owner: u32,
        reader: u32,
        pfns: &mut Option<Vec<Difference>>,
    ) -> Result<Check> {
        let view = space::maps::read(reader)?;
        let mut kernel = view.regions;
        if pfns.is_none() {
            // Once per checkpoint: it depends on the kernel's view only, not on the order
            // of the batch tried.
            *pfns = Some(self.page_checks(owner).check(reader, &kernel)?);
        }
        let mut extra = Vec::new();
        // A line verify cannot parse is a mismatch of its own, never an abort.
        extra.extend(view.unparsed.iter().map(|u| Difference {
            start: 0,
            end: 0,
            field: Field::MapsLine,
            expected: format!("a maps line (line {}: {})", u.line, u.reason),
            found: u.text.to_string(),
        }));
        if self.plant == Some(Plant::MapsPerms)
            && let Some(r) = kernel.iter_mut().find(|r| r.perms.starts_with("rw"))
        {
            r.perms.replace_range(1..2, "-");
        }
        let proc = self.procs.get_mut(&owner).expect("checked by the caller");
        let shadow = proc.shadow.as_mut().expect("checked by the caller");
        let mut comparison = shadow.check(&kernel);
        if !comparison.differences.is_empty() && proc.unmodelled.iter().any(|c| c == "fault") {
            // Stack growth is modelled: the fault's cause is settled if that explains it.
            if !shadow.grow_down(&kernel).is_empty() {
                proc.unmodelled.retain(|c| c != "fault");
                comparison = shadow.check(&kernel);
            }
        }
        for n in &comparison.notes {
            eprintln!(
                "mmap-trace: note: pid {reader}: {:#x}-{:#x}: the same file (device and inode) is now named {:?} (events named it {:?}): renamed or unlinked, no mapping changed",
                n.start, n.end, n.found, n.expected
            );
        }
        Ok(Check {
            kernel,
            comparison,
            extra,
        })
    }

    fn report_all(
        &mut self,
        owner: u32,
        check: Check,
        last: Option<&Event>,
        out: &mut Output,
    ) -> Result<()> {
        let proc = self.procs.entry(owner).or_default();
        let unmodelled = std::mem::take(&mut proc.unmodelled);
        let maps_differences = &check.comparison.differences;
        // Page PFNs and unreadable maps lines are never explained by a cause: mismatches.
        let mut mismatches: Vec<&Difference> = check.extra.iter().collect();
        if unmodelled.is_empty() {
            mismatches.extend(maps_differences);
        } else if !maps_differences.is_empty() {
            // A cause the shadow does not model explains the change: adopt it.
            proc.stats.unmodelled += 1;
            let mut causes = unmodelled;
            causes.dedup();
            let record = UnmodelledRecord {
                pid: owner,
                checkpoint: proc.stats.checkpoints,
                cause: causes.join(", "),
                ranges: maps_differences
                    .iter()
                    .map(|d| AdoptedRange {
                        start: Hex(d.start),
                        end: Hex(d.end),
                        field: d.field,
                        expected: d.expected.as_str().into(),
                        found: d.found.as_str().into(),
                    })
                    .collect(),
            };
            eprintln!(
                "mmap-trace: pid {owner}: {} changed what maps shows ({} ranges); not modelled: adopted from the kernel's view",
                record.cause,
                record.ranges.len()
            );
            out.record(&record).or_else(ignore_closed_output)?;
        }
        let proc = self.procs.entry(owner).or_default();
        proc.stats.mismatches += mismatches.len() as u64;
        for d in mismatches {
            self.report(owner, d, last, out)?;
        }
        // Adopt the kernel's view so the next checkpoint reports only new differences.
        if let Some(shadow) = self.procs.entry(owner).or_default().shadow.as_mut() {
            shadow.adopt(&check.kernel, &check.comparison);
        }
        Ok(())
    }

    /// PFN differences of a checkpoint (the page checks adopt the kernel's PFN already).
    fn report_pages(
        &mut self,
        owner: u32,
        differences: Vec<Difference>,
        last: Option<&Event>,
        out: &mut Output,
    ) -> Result<()> {
        self.procs.entry(owner).or_default().stats.mismatches += differences.len() as u64;
        for d in &differences {
            self.report(owner, d, last, out)?;
        }
        Ok(())
    }

    fn report(
        &self,
        pid: u32,
        d: &Difference,
        last: Option<&Event>,
        out: &mut Output,
    ) -> Result<()> {
        let record = MismatchRecord {
            pid,
            checkpoint: self.procs.get(&pid).map_or(0, |p| p.stats.checkpoints),
            after_probe: last.map_or("fork", |e| e.probe().name()).into(),
            after_ts_ns: last.map_or(0, |e| e.header().ts_ns),
            start: Hex(d.start),
            end: Hex(d.end),
            field: d.field,
            expected: d.expected.as_str().into(),
            found: d.found.as_str().into(),
        };
        let source = d.field.source();
        eprintln!(
            "mmap-trace: MISMATCH at checkpoint {} of pid {pid} (after {} at {} ns): {:#x}-{:#x} {}: events imply {:?}, /proc/{pid}/{source} shows {:?}",
            record.checkpoint,
            record.after_probe,
            record.after_ts_ns,
            d.start,
            d.end,
            d.field,
            d.expected,
            d.found
        );
        out.record(&record).or_else(ignore_closed_output)?;
        Ok(())
    }
}

/// What the kernel's view of a checkpoint says.
struct Check {
    kernel: Vec<Region>,
    /// The shadow against maps (differences and notes).
    comparison: Comparison,
    /// Maps lines that could not be read.
    extra: Vec<Difference>,
}

impl Check {
    fn agrees(&self) -> bool {
        self.comparison.differences.is_empty() && self.extra.is_empty()
    }
}

/// One of the five probed calls, through the model; its cause when not modelled.
fn apply_call(shadow: &mut ShadowSpace, e: &SyscallEvent, pid: u32) -> Option<String> {
    let nr = match Probe::from_u32(e.header.probe) {
        Some(Probe::Mmap) => libc::SYS_mmap,
        Some(Probe::Munmap) => libc::SYS_munmap,
        Some(Probe::Mprotect) => libc::SYS_mprotect,
        Some(Probe::Mremap) => libc::SYS_mremap,
        Some(Probe::Brk) => libc::SYS_brk,
        _ => return None,
    };
    unmodelled(shadow.apply_syscall(nr as u64, e.args, e.ret, &ProcEnv { pid }))
}

fn unmodelled(applied: Applied) -> Option<String> {
    match applied {
        Applied::Unmodelled { cause } => Some(cause.to_string()),
        Applied::Modelled | Applied::NoMapsChange | Applied::Failed => None,
    }
}

/// A catch-all record through the model: the cause, when the shadow does not model it
/// (the checkpoint then adopts the kernel's view and says so).
fn apply_change(
    shadow: &mut ShadowSpace,
    c: &MmChangeEvent,
    pid: u32,
    plant: Option<Plant>,
) -> Option<String> {
    match MmChangeCause::from_u32(c.cause) {
        Some(MmChangeCause::Syscall) if c.compat != 0 => {
            (!is_error(c.ret)).then(|| crate::kernel::syscall_names::name(c.nr, true))
        }
        Some(MmChangeCause::Syscall) => {
            let nr = c.nr as u64;
            if plant == Some(Plant::UnmodelShm)
                && matches!(nr as i64, libc::SYS_shmat | libc::SYS_shmdt)
            {
                return Some(crate::kernel::syscall_names::name(c.nr, false));
            }
            unmodelled(shadow.apply_syscall(nr, c.args, c.ret, &ProcEnv { pid }))
        }
        // Settled at the checkpoint: stack growth, or adopted.
        Some(MmChangeCause::Fault) => Some("fault".to_string()),
        _ => Some(format!(
            "kernel ({} pid {})",
            decode::c_str(&c.header.comm),
            c.locker_pid
        )),
    }
}
