//! `mmap-trace verify`: replay the traced events into a shadow address space and compare
//! it with /proc/<pid>/maps after every event.
//!
//! The comparison needs the process to hold still: with `tracer_tgid` set (to verify's
//! own), the syscall and exec probes send each thread verify traces SIGSTOP as its call
//! returns, which verify swallows in the ptrace stop. It holds every thread, drains the
//! ring buffer (each call that completed has submitted its event by then), applies the
//! events, compares, and resumes the threads.
//!
//! Owns the shadow per process, the checkpoints, the page checks (`pages`) and
//! `verify-driver` (`driver`). May not touch: the address-space rules (space/ owns them,
//! for report too), or how records are written (its records are the schema's; output
//! writes them).

pub mod driver;
mod kernel_view;
mod order;
mod pages;
pub mod shadow;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use mmap_trace_common::{MmChangeCause, MmChangeEvent, Probe};
use tokio::io::unix::AsyncFd;

use crate::{
    kernel::decode::{self, Call, Event, is_error},
    kernel::loader::LoadOptions,
    output::{Format, Output, Summary, ignore_closed_output},
    process::child_signals::ChildSignals,
    process::hold::{Hold, Holder, Notice},
    process::session::{Session, StopSignals, Target, monotonic_ns, runtime},
    schema::{
        AdoptedRange, Hex, MismatchRecord, PartialRecord, ProcessRecord, UnmodelledRecord,
        VerifyStats,
    },
    space::{self, Applied, Comparison, Field, ProcEnv, Region, RegionMap},
    verify::{
        kernel_view::KernelView,
        shadow::{Difference, ShadowSpace},
    },
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
    /// Leave the CPUs' idle policy alone (no [`crate::process::cpu::AwakeCpus`]).
    pub cpus_may_sleep: bool,
}

/// A call that failed but may have changed part of its ranges before it did.
#[derive(Clone, Debug)]
struct FailedCall {
    call: String,
    ret: i64,
    ranges: Vec<(u64, u64)>,
}

impl FailedCall {
    fn touches(&self, start: u64, end: u64) -> bool {
        self.ranges.iter().any(|&(s, e)| s < end && start < e)
    }
}

/// What applying one event asks of the checkpoint.
enum Applying {
    Done,
    /// A cause the shadow does not model (the kernel's view is adopted and said).
    Unmodelled(String),
    /// A failed call whose ranges are compared (what it did is adopted and said).
    Failed(FailedCall),
}

/// One verified process.
#[derive(Default)]
struct Proc {
    shadow: Option<ShadowSpace>,
    parent: Option<u32>,
    stats: VerifyStats,
    /// Causes the shadow does not model, seen since the last checkpoint.
    unmodelled: Vec<String>,
    /// Failed calls since the last checkpoint that may have changed part of their ranges.
    failed: Vec<FailedCall>,
    /// The ranges the calls since the last checkpoint may have changed.
    windows: Vec<(u64, u64)>,
    /// The kernel's view as of this process's last checkpoint (whole reads, with the
    /// ranges asked since spliced in).
    kernel: Option<KernelView>,
    /// `PROCMAP_QUERY` on maps, opened for this pid's current address space.
    query: Option<(u32, space::maps::MapsQuery)>,
    /// When maps was last read whole.
    last_whole: Option<std::time::Instant>,
    ended: Option<String>,
    /// The last event applied to this process (probe, time): what a difference found at
    /// a checkpoint that brought no event of its own (its exit, a whole comparison) is
    /// reported after.
    last_event: Option<(&'static str, u64)>,
}

struct Verifier {
    procs: BTreeMap<u32, Proc>,
    /// vfork (CLONE_VM) children: their changes are their owner's address space until
    /// they exec (the lifecycle's rule; verify keeps every process to report on it).
    sharing: space::Sharing,
    plant: Option<Plant>,
    /// File pages against pagemap, per address space (verify/pages.rs).
    pages: HashMap<u32, pages::PageChecks>,
    full: bool,
    /// Records that did not decode: events the proof lost.
    malformed: u64,
    /// Events of a checkpoint that could not hold its processes (a thread blocked on a
    /// userfaultfd reader that was stopped): applied at the next one.
    deferred: Vec<Event>,
    /// The thread whose event stopped it last (verify follows it to its CPU).
    last_stopped: Option<(u32, u32)>,
    /// Whether the kernel answers `PROCMAP_QUERY` (6.11+; None: not asked yet).
    query_works: Option<bool>,
    /// The records carry when each call took the mm's write lock (the catch-all is
    /// attached): a batch is applied in that order, the kernel's.
    lock_order: bool,
    /// Processes that ended in a way only verify's holding could explain: verify changed
    /// the program it checked, so the run cannot pass.
    unexplained_endings: u64,
}

/// Returns whether the kernel agreed with the events at every checkpoint.
pub fn run(config: VerifyConfig) -> Result<bool> {
    if matches!(config.target, Target::All | Target::Comm(_)) {
        bail!("verify needs one process: give --pid PID or -- CMD [ARGS…]");
    }
    let mut load = config.load;
    // The kernel's number for this process: the targets' tracer (the probes stop only
    // the tasks it traces). In the initial pid namespace, like the targets' pids.
    load.filter.tracer_tgid = std::process::id();
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
    // Before any thread exists and before the command's fork (it gets the mask back).
    let child_signals = ChildSignals::block()?;
    let runtime = runtime()?;
    let StopSignals {
        mut sigint,
        mut sigterm,
    } = StopSignals::install(&runtime)?;
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
        sharing: space::Sharing::default(),
        plant: config.plant,
        pages: HashMap::new(),
        full: config.full,
        malformed: 0,
        lock_order: tracer.attached.contains(&Probe::MmLock),
        query_works: None,
        last_stopped: None,
        deferred: Vec::new(),
        unexplained_endings: 0,
    };
    verifier.procs.insert(pid, Proc::default());
    if child.is_none() {
        // A running process: seed from its maps while it holds still.
        // A thread blocked on another of its own (a userfaultfd) changes nothing while it
        // waits: the seed is read all the same.
        if holder.stop_process(pid, &[])? != Hold::Gone {
            verifier.seed(pid)?;
        }
        holder.resume_process(pid);
    }
    let ended = runtime.block_on(async {
        // SAFETY: the AsyncFd owns the ring buffer's descriptor while registered.
        let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        // SAFETY: the AsyncFd owns the signalfd while registered.
        let child_signals = unsafe { AsyncFd::register(child_signals) }
            .map_err(|e| e.into_parts().1)
            .context("watching SIGCHLD")?;
        let mut stopped = false;
        let mut cpu = crate::process::cpu::FollowCpu::new();
        let _awake = (!config.cpus_may_sleep)
            .then(crate::process::cpu::AwakeCpus::request)
            .flatten();
        // Records that stop their thread do not wake verify (the stop does); a record
        // whose stop never came, or that stops nobody (another task's change), is found
        // by this tick at the latest.
        let mut tick = tokio::time::interval(SAFETY_TICK);
        let mut signals_looked = std::time::Instant::now();
        let ended = loop {
            if !stopped {
                // About to sleep: the SIGCHLDs of stops already handled are dropped, so the
                // descriptor wakes verify for a new one only; a stop that came in between is
                // looked for once more.
                child_signals.get_ref().drain();
                stopped = holder.await_stop(std::time::Duration::ZERO)?;
            }
            if !stopped {
                tokio::select! {
                    guard = ring.readable_mut() => {
                        let mut guard = guard?;
                        guard.clear_ready();
                    }
                    guard = child_signals.readable() => {
                        let mut guard = guard?;
                        guard.get_inner().drain();
                        guard.clear_ready();
                    }
                    _ = tick.tick() => {}
                    _ = sigint.recv() => break "SIGINT".to_string(),
                    _ = sigterm.recv() => break "SIGTERM".to_string(),
                }
            } else if signals_looked.elapsed() >= SIGNAL_LOOK {
                // A target that stops again within the spin below never lets verify reach
                // the select above: Ctrl-C and SIGTERM are looked for here too, or a busy
                // target could not be interrupted (verify wrote its events on for ever).
                // The yield lets the runtime poll its driver, which delivers the signals.
                signals_looked = std::time::Instant::now();
                tokio::task::yield_now().await;
                tokio::select! {
                    biased;
                    _ = sigint.recv() => break "SIGINT".to_string(),
                    _ = sigterm.recv() => break "SIGTERM".to_string(),
                    () = std::future::ready(()) => {}
                }
            }
            for notice in holder.poll()? {
                verifier.notice(notice);
            }
            verifier.checkpoint(&mut holder, ring.get_mut(), &mut out)?;
            // Exits seen while holding processes for the checkpoint (a status that comes
            // after is taken by the look for the next stop below).
            for notice in holder.take_notices() {
                verifier.notice(notice);
            }
            // The target runs on to its next event and stops right after it: look for that
            // stop a little while without sleeping. Asleep, verify would be woken from
            // another CPU, which on a virtual machine costs ~100 µs (an IPI to a halted
            // vCPU) against ~20 µs for the whole checkpoint.
            stopped = !holder.is_empty() && holder.await_stop(NEXT_STOP_SPIN)?;
            if !stopped && let Some((p, tid)) = verifier.last_stopped {
                cpu.follow(p, tid);
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
        let mut tail = std::mem::take(&mut verifier.deferred);
        tail.extend(drain_events(ring.get_mut(), &mut verifier.malformed));
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
    let agreed = stats.mismatches == 0
        && lost == 0
        && stats.checkpoints > 0
        && verifier.unexplained_endings == 0;
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
    if verifier.unexplained_endings > 0 {
        eprintln!(
            "mmap-trace: {} processes ended differently than they would have alone: verify changed what it checked (a bug of verify's: please report it)",
            verifier.unexplained_endings
        );
    }
    if stats.checkpoints == 0 {
        eprintln!(
            "mmap-trace: nothing was checked: the target made no traced call while verify ran"
        );
    }
    Ok(agreed)
}

/// Says what a child verify cannot trace means for the run. The kernel does not let a
/// tracer follow a clone made with CLONE_UNTRACED; programs make one to ptrace their own
/// process (a sanitizer's leak checker stopping the world, an in-process debugger), which
/// fails while verify traces it, as under strace or gdb.
fn untraced_child(parent: u32, child: u32, shares_mm: bool) {
    eprintln!(
        "mmap-trace: warning: pid {parent} made pid {child} with CLONE_UNTRACED{}: verify cannot hold it still{}. Programs do that to ptrace their own threads (LeakSanitizer at exit, in-process debuggers), which they cannot while verify traces them: they fail as under strace or gdb (for LeakSanitizer: ASAN_OPTIONS=detect_leaks=0 or LSAN_OPTIONS=detect_leaks=0)",
        if shares_mm {
            ", sharing its memory"
        } else {
            ""
        },
        if shares_mm {
            "; its changes are applied to its parent's model, checked when the parent stops"
        } else {
            " and does not check it"
        }
    );
}

/// The ring's records, but exits: verify sees its processes end through ptrace, which
/// also gives their status (the exit probe is attached for the followed set's sake).
fn drain_events(ring: &mut RingBuf<MapData>, malformed: &mut u64) -> Vec<Event> {
    let mut events = decode::drain_all(ring, malformed);
    events.retain(|e| !matches!(e, Event::Exit(_)));
    events
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
            Notice::Exited {
                pid,
                status,
                unexplained,
            } => {
                if let Some(why) = unexplained {
                    eprintln!(
                        "mmap-trace: ERROR: pid {pid} ended differently than it would have alone ({status}): {why}"
                    );
                    self.unexplained_endings += 1;
                }
                self.procs.entry(pid).or_default().ended = Some(status);
            }
        }
    }

    /// The process whose shadow `pid`'s changes go to (a vfork child's parent).
    fn owner(&self, pid: u32) -> u32 {
        self.sharing.owner(pid)
    }

    fn checkpoint(
        &mut self,
        holder: &mut Holder,
        ring: &mut RingBuf<MapData>,
        out: &mut Output,
    ) -> Result<()> {
        let mut events = std::mem::take(&mut self.deferred);
        events.extend(drain_events(ring, &mut self.malformed));
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
                self.last_stopped = Some((e.header().pid, e.header().tid));
            }
        }
        let mut alive = BTreeSet::new();
        let mut blocked = None;
        for &p in &pids {
            if !holder.is_traced(p) {
                continue;
            }
            match holder.stop_process(p, &expect)? {
                Hold::Held => {
                    alive.insert(p);
                }
                Hold::Gone => {}
                Hold::Blocked(why) => {
                    blocked = Some(why);
                    break;
                }
            }
        }
        events.extend(drain_events(ring, &mut self.malformed));
        if let Some(why) = blocked {
            // A change in flight (a munmap waiting for its userfaultfd reader) may already
            // show in maps without its event: compare later, when it has gone on. Nothing
            // is applied now; everything held is let go.
            log::info!("checkpoint deferred: {why}");
            self.deferred = events;
            for p in pids {
                holder.resume_process(p);
            }
            return Ok(());
        }
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
                self.sharing.fork(f.header.pid, f.child_pid, true);
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
                Some(reader) => {
                    let exiting = holder.is_exiting(owner);
                    self.apply_and_compare(owner, reader, exiting, &batch, out)?
                }
                None => {
                    let units = order::units(&batch);
                    let first = order::serial_orders(&units, self.lock_order).swap_remove(0);
                    for u in first {
                        for event in &units[u].events {
                            self.apply(event)?;
                        }
                    }
                }
            }
        }
        for p in pids {
            holder.resume_process(p);
        }
        Ok(())
    }

    /// Applies the batch in the order its calls took the mm's write lock (`order.rs`)
    /// and compares. Without lock times, the orders that keep every thread's own order
    /// and real time are tried, exit order first: a mismatch is then reported only when
    /// no such order explains the kernel's view, and as the exit order shows it.
    fn apply_and_compare(
        &mut self,
        owner: u32,
        reader: u32,
        exiting: bool,
        events: &[Event],
        out: &mut Output,
    ) -> Result<()> {
        let after = self.after(owner, events.last());
        let units = order::units(events);
        let orders = order::serial_orders(&units, self.lock_order);
        // Another order starts from the shadow as it is now: a copy, kept only when there
        // is another order to try (the whole shadow: O(VMAs)).
        let base = (orders.len() > 1).then(|| {
            self.procs.get(&owner).map_or((None, 0, 0), |p| {
                (p.shadow.clone(), p.unmodelled.len(), p.failed.len())
            })
        });
        let mut first_failure = None;
        let mut pfns = None;
        for (tried, order) in orders.iter().enumerate() {
            if tried > 0
                && let Some((shadow, unmodelled, failed)) = &base
                && let Some(p) = self.procs.get_mut(&owner)
            {
                p.shadow = shadow.clone();
                p.unmodelled.truncate(*unmodelled);
                p.failed.truncate(*failed);
            }
            for &u in order {
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
            let check = self.differences(owner, reader, exiting, &mut pfns)?;
            let proc = self.procs.entry(owner).or_default();
            if check.agrees() {
                proc.stats.checkpoints += 1;
                proc.unmodelled.clear();
                proc.failed.clear();
                return self.report_pages(owner, pfns.unwrap_or_default(), after, out);
            }
            if base.is_none() {
                // The one order: its state is the one reported.
                proc.stats.checkpoints += 1;
                self.report_pages(owner, pfns.unwrap_or_default(), after, out)?;
                return self.report_all(owner, check, after, out);
            }
            if first_failure.is_none() {
                first_failure = Some((
                    check,
                    proc.shadow.clone(),
                    proc.unmodelled.clone(),
                    proc.failed.clone(),
                ));
            }
        }
        let Some((check, shadow, unmodelled, failed)) = first_failure else {
            return Ok(());
        };
        let proc = self.procs.entry(owner).or_default();
        proc.shadow = shadow;
        proc.stats.checkpoints += 1;
        proc.unmodelled = unmodelled;
        proc.failed = failed;
        self.report_pages(owner, pfns.unwrap_or_default(), after, out)?;
        self.report_all(owner, check, after, out)
    }

    /// What a difference found now is reported after: the batch's last event, else the
    /// last one this process had, else how its model began (a fork, or the exec or attach
    /// that read its maps).
    fn after(&mut self, owner: u32, last: Option<&Event>) -> After {
        let proc = self.procs.entry(owner).or_default();
        if let Some(e) = last {
            proc.last_event = Some((e.probe().name(), e.header().ts_ns));
        }
        match proc.last_event {
            Some((probe, ts_ns)) => After { probe, ts_ns },
            None => After {
                probe: if proc.parent.is_some() {
                    "fork"
                } else {
                    "start"
                },
                ts_ns: 0,
            },
        }
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
        // The shadow starts as the kernel's view: the copy of that view starts there too.
        let kernel = KernelView::whole(&view.regions);
        let shadow = ShadowSpace::seed(view.regions, stat.start_brk.unwrap_or(0), stat.startstack);
        let proc = self.procs.entry(pid).or_default();
        proc.shadow = Some(shadow);
        self.sharing.exec(pid);
        proc.kernel = Some(kernel);
        proc.last_whole = Some(std::time::Instant::now());
        // A new address space: maps is opened again for it.
        proc.query = None;
        proc.windows.clear();
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
            // The child starts as the parent is at the fork (a vfork child shares it),
            // unknown where a failed call of the parent's may have changed something.
            let (inherited, failed) = self.procs.get(&owner).map_or((None, Vec::new()), |p| {
                (
                    p.shadow.as_ref().map(ShadowSpace::fork_child),
                    p.failed.clone(),
                )
            });
            let child = self.procs.entry(f.child_pid).or_default();
            child.parent.get_or_insert(pid);
            // (Once: another order of the same events applies the fork again.)
            if f.untraced != 0 && child.ended.is_none() {
                untraced_child(pid, f.child_pid, f.shares_mm != 0);
                // Never held, so never seen to end: what is known of it is this.
                child.ended = Some("not traced (made with CLONE_UNTRACED)".into());
            }
            if f.shares_mm != 0 {
                self.sharing.fork(pid, f.child_pid, true);
            } else if f.untraced == 0 {
                child.shadow = inherited;
                child.failed = failed;
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
        let call = event.call();
        let applying = match event {
            Event::RemapPfn(e) => {
                shadow
                    .space_mut()
                    .remap_pfn_range(e.vma.vm_start, e.vma.vm_flags, e.pfn);
                Applying::Done
            }
            Event::MmChange(c) => apply_change(shadow, c, call, pid, plant),
            _ => call.map_or(Applying::Done, |call| apply_syscall(shadow, call, pid)),
        };
        // A call after a failed one in this batch, over ranges the failed one may have
        // changed, was applied to a model that may be wrong there (an mprotect stops at a
        // hole the model does not know of): its ranges are as unknown, and compared and
        // adopted with the failed call's.
        let ranges = call.map_or_else(Vec::new, |c| space::call_ranges(c.nr, c.args, c.ret));
        if !proc.failed.is_empty()
            && !matches!(applying, Applying::Failed(_))
            && let Some(failed) = proc
                .failed
                .iter_mut()
                .find(|f| ranges.iter().any(|&(s, e)| f.touches(s, e)))
        {
            failed.ranges.extend(ranges.iter().copied());
        }
        // What the next checkpoint compares (with what the model itself changed).
        proc.windows.extend(ranges);
        match applying {
            Applying::Done => {}
            Applying::Unmodelled(cause) => proc.unmodelled.push(cause),
            Applying::Failed(call) => proc.failed.push(call),
        }
        Ok(())
    }

    /// The kernel's view now (read from `reader`), how `owner`'s shadow differs from it,
    /// and how many page PFNs were compared. Only what the batch's calls touched is
    /// asked of the kernel (`PROCMAP_QUERY`), unless a whole comparison is due: at a
    /// process's first checkpoint and its exit, after a change the model does not
    /// explain, without lock order, every [`WHOLE_INTERVAL`], and on kernels without the
    /// query. A fault's checkpoint first lets the shadow grow its stacks and
    /// MAP_GROWSDOWN mappings to what the kernel shows.
    fn differences(
        &mut self,
        owner: u32,
        reader: u32,
        exiting: bool,
        pfns: &mut Option<Vec<Difference>>,
    ) -> Result<Check> {
        let lock_order = self.lock_order;
        let plant = self.plant;
        let query_works = self.query_works;
        let proc = self.procs.get_mut(&owner).expect("checked by the caller");
        let mut windows = std::mem::take(&mut proc.windows);
        if let Some(shadow) = proc.shadow.as_mut() {
            windows.extend(shadow.take_touched());
        }
        let whole = self.full
            || exiting
            || !lock_order
            || query_works == Some(false)
            || !proc.unmodelled.is_empty()
            || proc.kernel.is_none()
            || proc
                .last_whole
                .is_none_or(|t| t.elapsed() >= WHOLE_INTERVAL);
        if !whole && proc.query.as_ref().is_none_or(|(pid, _)| *pid != reader) {
            proc.query = space::maps::MapsQuery::open(reader)?.map(|q| (reader, q));
            if proc.query.is_none() {
                self.query_works = Some(false);
            }
        }
        let query = proc.query.as_mut().filter(|_| !whole).map(|(_, q)| q);
        // Once the pid no longer reaches an address space there is nothing to compare
        // with: its maps read empty (or a query fails), which is not what the events
        // did. Said, counted as a checkpoint that agrees; its exit follows.
        let gone = |reader: u32| {
            log::info!(
                "pid {reader}: its address space is no longer reachable through /proc \
                 (exiting): not compared at this checkpoint"
            );
            Check {
                kernel: Vec::new(),
                comparison: Comparison::default(),
                extra: Vec::new(),
            }
        };
        let check = match (whole, query) {
            (false, Some(query)) => {
                let windows = merge_ranges(windows);
                let mut kernel = RegionMap::default();
                for &(start, end) in &windows {
                    let regions = match query.regions(start, end) {
                        Ok(regions) => regions,
                        Err(_) if !space::maps::has_address_space(reader) => {
                            return Ok(gone(reader));
                        }
                        Err(e) => return Err(e),
                    };
                    for r in regions {
                        proc.stats.maps_queried_vmas += 1;
                        kernel.insert(r);
                    }
                }
                if plant == Some(Plant::MapsPerms) {
                    plant_perms(&mut kernel);
                }
                let view = proc.kernel.as_mut().expect("checked: whole otherwise");
                for &(start, end) in &windows {
                    view.splice(start, end, &kernel.clipped(start, end));
                }
                let shadow = proc.shadow.as_mut().expect("checked by the caller");
                self.query_works = Some(true);
                Check {
                    comparison: shadow.check_windows(&windows, &kernel),
                    kernel: kernel.to_vec(),
                    extra: Vec::new(),
                }
            }
            _ => {
                let view = space::maps::read(reader)?;
                if view.regions.is_empty()
                    && view.unparsed.is_empty()
                    && !space::maps::has_address_space(reader)
                {
                    return Ok(gone(reader));
                }
                let mut kernel = RegionMap::from_regions(view.regions);
                if plant == Some(Plant::MapsPerms) {
                    plant_perms(&mut kernel);
                }
                let kernel = kernel.to_vec();
                proc.kernel = Some(KernelView::whole(&kernel));
                proc.last_whole = Some(std::time::Instant::now());
                proc.stats.maps_whole_reads += 1;
                // A line verify cannot parse is a mismatch of its own, never an abort.
                let extra = view
                    .unparsed
                    .iter()
                    .map(|u| Difference {
                        start: 0,
                        end: 0,
                        field: Field::MapsLine,
                        expected: format!("a maps line (line {}: {})", u.line, u.reason),
                        found: u.text.to_string(),
                    })
                    .collect();
                let shadow = proc.shadow.as_mut().expect("checked by the caller");
                let mut comparison = shadow.check(&kernel);
                if !comparison.differences.is_empty()
                    && proc.unmodelled.iter().any(|c| c == "fault")
                    && !shadow.grow_down(&kernel).is_empty()
                {
                    // Stack growth is modelled: the fault's cause is settled if that
                    // explains it.
                    proc.unmodelled.retain(|c| c != "fault");
                    comparison = shadow.check(&kernel);
                }
                Check {
                    kernel,
                    comparison,
                    extra,
                }
            }
        };
        if pfns.is_none() {
            // Once per checkpoint: it depends on the kernel's view only, not on the order
            // of the batch tried.
            let (full, plant_pfns) = (self.full, self.plant == Some(Plant::PfnOffByOne));
            let checks = self
                .pages
                .entry(owner)
                .or_insert_with(|| pages::PageChecks::new(full, plant_pfns));
            let view = self
                .procs
                .get(&owner)
                .and_then(|p| p.kernel.as_ref())
                .expect("set by the comparison above");
            *pfns = Some(checks.check(reader, view, exiting)?);
        }
        for n in &check.comparison.notes {
            eprintln!(
                "mmap-trace: note: pid {reader}: {:#x}-{:#x}: the same file (device and inode) is now named {:?} (events named it {:?}): renamed or unlinked, no mapping changed",
                n.start, n.end, n.found, n.expected
            );
        }
        Ok(check)
    }

    fn report_all(
        &mut self,
        owner: u32,
        check: Check,
        after: After,
        out: &mut Output,
    ) -> Result<()> {
        let proc = self.procs.entry(owner).or_default();
        let unmodelled = std::mem::take(&mut proc.unmodelled);
        let failed = std::mem::take(&mut proc.failed);
        // What a failed call did inside its own ranges: adopted and said, call by call.
        let (by_failed, maps_differences): (Vec<&Difference>, Vec<&Difference>) = check
            .comparison
            .differences
            .iter()
            .partition(|d| failed.iter().any(|f| f.touches(d.start, d.end)));
        for call in &failed {
            let ranges: Vec<AdoptedRange<'_>> = by_failed
                .iter()
                .filter(|d| call.touches(d.start, d.end))
                .map(|d| AdoptedRange {
                    start: Hex(d.start),
                    end: Hex(d.end),
                    field: d.field,
                    expected: d.expected.as_str().into(),
                    found: d.found.as_str().into(),
                })
                .collect();
            if ranges.is_empty() {
                continue;
            }
            proc.stats.partial += 1;
            let record = PartialRecord {
                pid: owner,
                checkpoint: proc.stats.checkpoints,
                call: call.call.as_str().into(),
                error: crate::output::flags::errno_name(-call.ret),
                ranges,
            };
            eprintln!(
                "mmap-trace: pid {owner}: {} failed ({}) after changing part of its range ({} ranges): adopted from the kernel's view",
                record.call,
                record.error,
                record.ranges.len()
            );
            out.record(&record).or_else(ignore_closed_output)?;
        }
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
                    .copied()
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
            self.report(owner, d, after, out)?;
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
        after: After,
        out: &mut Output,
    ) -> Result<()> {
        self.procs.entry(owner).or_default().stats.mismatches += differences.len() as u64;
        for d in &differences {
            self.report(owner, d, after, out)?;
        }
        Ok(())
    }

    fn report(&self, pid: u32, d: &Difference, after: After, out: &mut Output) -> Result<()> {
        let record = MismatchRecord {
            pid,
            checkpoint: self.procs.get(&pid).map_or(0, |p| p.stats.checkpoints),
            after_probe: after.probe.into(),
            after_ts_ns: after.ts_ns,
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

/// Where in the event stream a checkpoint stands: the event a difference is reported
/// after.
#[derive(Clone, Copy)]
struct After {
    probe: &'static str,
    ts_ns: u64,
}

/// The longest a record waits for verify when nothing woke it.
const SAFETY_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// How often verify looks for Ctrl-C and SIGTERM while its target keeps it busy.
const SIGNAL_LOOK: std::time::Duration = std::time::Duration::from_millis(20);

/// How long verify looks for the target's next stop before it sleeps until woken.
const NEXT_STOP_SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// A whole comparison at least this often, however little the calls touched: what no
/// event announced (a kernel thread's change seen only through its lock) is found within
/// it. A whole read of maps costs ~0.14 µs per VMA (8 ms at 60,000), so once a second costs
/// under 1% of a run.
const WHOLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Sorted, overlapping and touching ranges joined.
fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|&(s, e)| s < e);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Self-test: drops the write bit of the first writable region of a kernel snapshot.
fn plant_perms(kernel: &mut RegionMap) {
    let mut regions = kernel.to_vec();
    if let Some(r) = regions.iter_mut().find(|r| r.perms.starts_with("rw")) {
        r.perms.replace_range(1..2, "-");
    }
    *kernel = RegionMap::from_regions(regions);
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

/// A syscall through the model, and what the checkpoint must make of it.
fn apply_syscall(shadow: &mut ShadowSpace, call: Call, pid: u32) -> Applying {
    match shadow.apply_syscall(call.nr, call.args, call.ret, &ProcEnv { pid }) {
        Applied::Unmodelled { cause } => Applying::Unmodelled(cause.to_string()),
        Applied::Failed => {
            let ranges = space::call_ranges(call.nr, call.args, call.ret);
            if ranges.is_empty() {
                return Applying::Done;
            }
            Applying::Failed(FailedCall {
                call: crate::kernel::syscall_names::name(call.nr as i64, false),
                ret: call.ret,
                ranges,
            })
        }
        Applied::Modelled | Applied::NoMapsChange => Applying::Done,
    }
}

/// A catch-all record through the model (a cause the shadow does not model is adopted
/// from the kernel's view at the checkpoint, and said).
fn apply_change(
    shadow: &mut ShadowSpace,
    c: &MmChangeEvent,
    call: Option<Call>,
    pid: u32,
    plant: Option<Plant>,
) -> Applying {
    match (MmChangeCause::from_u32(c.cause), call) {
        (Some(MmChangeCause::Syscall), Some(call)) => {
            if plant == Some(Plant::UnmodelShm)
                && matches!(call.nr as i64, libc::SYS_shmat | libc::SYS_shmdt)
            {
                return Applying::Unmodelled(crate::kernel::syscall_names::name(c.nr, false));
            }
            apply_syscall(shadow, call, pid)
        }
        // An ia32 call (its number names another call): adopted when it succeeded.
        (Some(MmChangeCause::Syscall), None) => {
            if is_error(c.ret) {
                Applying::Done
            } else {
                Applying::Unmodelled(crate::kernel::syscall_names::name(c.nr, c.compat != 0))
            }
        }
        // Settled at the checkpoint: stack growth, or adopted.
        (Some(MmChangeCause::Fault), _) => Applying::Unmodelled("fault".to_string()),
        _ => Applying::Unmodelled(format!(
            "kernel ({} pid {})",
            decode::c_str(&c.header.comm),
            c.locker_pid
        )),
    }
}
