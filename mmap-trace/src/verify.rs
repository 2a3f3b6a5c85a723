//! `mmap-trace verify`: replay the traced events into a shadow address space and compare
//! it with /proc/<pid>/maps after every event.
//!
//! The comparison needs the process to hold still: with `stop_after_event` set, the
//! syscall and exec probes send the process SIGSTOP as the call returns. Userspace waits
//! until every thread is stopped, drains the ring buffer (each call that completed has
//! submitted its event by then), applies the events, compares, and sends SIGCONT.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::PathBuf, time::Duration};

use procfs::process::{MemoryPageFlags, PageInfo};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use mmap_trace_common::{Probe, SyscallEvent};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::{
    decode::{self, Event},
    json::{Hex, is_error},
    loader::LoadOptions,
    maps,
    output::{Format, Output, Summary, VerifyStats},
    session::{Session, StopSignals, Target, monotonic_ns, reap, runtime},
    shadow::{Difference, FileIdentity, PAGE, ShadowSpace, compare},
    trace::ignore_closed_output,
};

/// Self-test: doctor one input so the checks must fail (hidden flag; used by the tests
/// that prove a mismatch is caught).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Plant {
    /// Drop the write bit of the first writable region of every maps snapshot.
    MapsPerms,
    /// Add one to every PFN the page_cache events report.
    PfnOffByOne,
}

pub struct VerifyConfig {
    pub target: Target,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub load: LoadOptions,
    pub plant: Option<Plant>,
}

#[derive(Serialize)]
struct MismatchRecord<'a> {
    #[serde(rename = "type")]
    record_type: &'static str,
    pid: u32,
    checkpoint: u64,
    /// The last event applied before the comparison (the one that made the difference).
    after_probe: &'static str,
    after_ts_ns: u64,
    start: Hex,
    end: Hex,
    field: &'static str,
    expected: &'a str,
    found: &'a str,
}

struct Verifier {
    pid: u32,
    shadow: Option<ShadowSpace>,
    stats: VerifyStats,
    plant: Option<Plant>,
    /// (device, inode, page index) → PFN, from page_cache events.
    file_pfns: HashMap<((u32, u32), u64, u64), u64>,
}

/// Returns whether the kernel agreed with the events at every checkpoint.
pub fn run(config: VerifyConfig) -> Result<bool> {
    if matches!(config.target, Target::All | Target::Comm(_)) {
        bail!("verify needs one process: give --pid PID or -- CMD [ARGS…]");
    }
    let mut load = config.load;
    load.filter.stop_after_event = 1;
    if load.requested.is_none() {
        let mut probes = crate::loader::default_probes();
        probes.push(Probe::PageCache);
        // Asked for implicitly: where the kernel lacks kprobes, skip those with a note.
        load.implicit = true;
        load.requested = Some(probes);
    }
    let requested = load.requested.as_deref().unwrap_or_default();
    if matches!(config.target, Target::Command(_)) && !requested.contains(&Probe::Exec) {
        bail!("verify -- CMD needs the exec probe: the shadow starts from the command's maps at its exec; add exec to --probes");
    }
    let runtime = runtime()?;
    let StopSignals { mut sigint, mut sigterm } = StopSignals::install(&runtime)?;
    // Before attaching: a bad path must not leave a command running untraced.
    let sink = crate::output::open(config.output.as_deref())?;
    let session = Session::start("verify", &config.target, load)?;
    let mut out = Output::new(config.format, sink, session.start_ns);
    let Session { tracer, ring, pidfd, child, pid, start_ns } = session;
    let pid = pid.context("verify needs one process")?;
    let _continue = ContinueOnDrop(pid);
    let mut verifier = Verifier {
        pid,
        shadow: None,
        stats: VerifyStats::default(),
        plant: config.plant,
        file_pfns: HashMap::new(),
    };
    if child.is_none() {
        // A running process: seed from its maps while it holds still.
        verifier.hold(|v| v.seed())?;
    }
    let ended = runtime.block_on(async {
        let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        let exited = unsafe { AsyncFd::register(pidfd.context("no pidfd")?) }.map_err(|e| e.into_parts().1)?;
        let ended = loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    verifier.checkpoint(guard.get_inner_mut(), &mut out)?;
                    guard.clear_ready();
                }
                res = exited.readable() => {
                    let _ = res?;
                    break match child {
                        Some(c) => format!("command exited ({})", reap(c)),
                        None => "target process exited".to_string(),
                    };
                }
                _ = sigint.recv() => break "SIGINT".to_string(),
                _ = sigterm.recv() => break "SIGTERM".to_string(),
            }
        };
        // Events of the last calls before exit: logged, not compared (nothing to compare with).
        let tail = drain(ring.get_mut())?;
        for event in &tail {
            out.event(event, crate::paths::kernel_path(event)).or_else(ignore_closed_output)?;
        }
        anyhow::Ok(ended)
    })?;
    tracer.flush_logs();

    let mut summary = Summary {
        attached: tracer.attached.clone(),
        duration_ns: monotonic_ns().saturating_sub(start_ns),
        events: out.counts,
        lost: tracer.lost()?,
        ended,
        ..Summary::default()
    };
    let lost: u64 = summary.lost.iter().sum();
    let stats = verifier.stats;
    summary.verify = Some(stats);
    out.summary(&summary).and_then(|()| out.flush()).or_else(ignore_closed_output)?;
    // Nothing checked is not a pass: the user asked for proof and got none.
    let agreed = stats.mismatches == 0 && lost == 0 && stats.checkpoints > 0;
    eprintln!(
        "mmap-trace: verify: {} checkpoints, {} mismatches, {} page PFNs checked, {lost} events lost: {}",
        stats.checkpoints,
        stats.mismatches,
        stats.pfn_checks,
        if agreed { "PASS" } else { "FAIL" }
    );
    if lost > 0 {
        eprintln!("mmap-trace: events were lost, so the shadow is incomplete; rerun with a larger --ring-buffer-kib");
    }
    if stats.checkpoints == 0 {
        eprintln!("mmap-trace: nothing was checked: the target made no traced call while verify ran");
    }
    Ok(agreed)
}

/// Never leave the target stopped behind us, whatever path ends the run.
struct ContinueOnDrop(u32);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

fn drain(ring: &mut RingBuf<MapData>) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        match decode::decode(&item) {
            Ok(e) => events.push(e),
            Err(e) => bail!("malformed record from the kernel: {e}"),
        }
    }
    Ok(events)
}

impl Verifier {
    fn checkpoint(&mut self, ring: &mut RingBuf<MapData>, out: &mut Output) -> Result<()> {
        let mut events = drain(ring)?;
        if events.is_empty() {
            return Ok(());
        }
        let alive = wait_stopped(self.pid)?;
        events.extend(drain(ring)?);
        for event in &events {
            out.event(event, crate::paths::kernel_path(event)).or_else(ignore_closed_output)?;
        }
        if alive {
            self.apply_and_compare(&events, out)?;
        } else {
            for event in &events {
                self.apply(event)?;
            }
        }
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid as i32, libc::SIGCONT) };
        Ok(())
    }

    /// Calls of different threads that overlap in time reach sys_exit in an order that
    /// need not be the one in which they changed the address space (mmap_lock decides).
    /// The batch is applied in exit order first and, if the kernel disagrees, in each
    /// other order that keeps every thread's own order and real time (a call that exited
    /// before another entered stays first). A mismatch is reported only when no such
    /// order explains the kernel's view, and then as the exit order shows it.
    fn apply_and_compare(&mut self, events: &[Event], out: &mut Output) -> Result<()> {
        let units = units(events);
        let base = self.shadow.clone();
        let mut first_failure = None;
        for order in serial_orders(&units) {
            self.shadow = base.clone();
            for &u in &order {
                for event in &units[u].events {
                    self.apply(event)?;
                }
            }
            if self.shadow.is_none() {
                return Ok(()); // before the command's exec: nothing to compare yet
            }
            let (kernel, differences, pfn_checks) = self.differences()?;
            if differences.is_empty() {
                self.stats.checkpoints += 1;
                self.stats.pfn_checks += pfn_checks;
                return Ok(());
            }
            if first_failure.is_none() {
                first_failure = Some((kernel, differences, pfn_checks, self.shadow.clone()));
            }
        }
        let Some((kernel, differences, pfn_checks, shadow)) = first_failure else {
            return Ok(());
        };
        self.shadow = shadow;
        self.stats.checkpoints += 1;
        self.stats.pfn_checks += pfn_checks;
        let last = *events.last().expect("non-empty batch");
        self.report_all(&differences, kernel, &last, out)
    }

    /// Runs `f` with the process stopped by us.
    fn hold(&mut self, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid as i32, libc::SIGSTOP) };
        let result = wait_stopped(self.pid).and_then(|_| f(self));
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid as i32, libc::SIGCONT) };
        result
    }

    fn seed(&mut self) -> Result<()> {
        let stat = procfs::process::Process::new(self.pid as i32)
            .and_then(|p| p.stat())
            .with_context(|| format!("reading /proc/{}/stat", self.pid))?;
        self.shadow = Some(ShadowSpace::seed(maps::read(self.pid)?, stat.start_brk.unwrap_or(0)));
        Ok(())
    }

    fn apply(&mut self, event: &Event) -> Result<()> {
        if let Event::Exec(_) = event {
            return self.seed();
        }
        let pid = self.pid;
        let Some(shadow) = self.shadow.as_mut() else {
            return Ok(()); // before the command's exec: its pre-exec image is ours
        };
        match event {
            Event::Syscall(e) if !is_error(e.ret) => apply_syscall(shadow, e, pid),
            Event::Mmap(e) if !is_error(e.call.ret) => apply_syscall(shadow, &e.call, pid),
            Event::RemapPfn(e) => shadow.remap_pfn_range(e.vma.vm_start, e.vma.vm_flags, e.pfn),
            Event::PageCache(e) => {
                let dev = (e.dev >> 20, e.dev & 0xfffff);
                let planted = u64::from(self.plant == Some(Plant::PfnOffByOne));
                for i in 0..1u64 << e.order.min(20) {
                    self.file_pfns.insert((dev, e.ino, e.index + i), e.pfn + i + planted);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The kernel's view now, how the shadow differs from it, and how many page PFNs
    /// were compared.
    fn differences(&mut self) -> Result<(Vec<maps::Region>, Vec<Difference>, u64)> {
        let mut kernel = maps::read(self.pid)?;
        let (mut differences, pfn_checks) = self.check_file_pfns(&kernel)?;
        if self.plant == Some(Plant::MapsPerms)
            && let Some(r) = kernel.iter_mut().find(|r| r.perms.starts_with("rw"))
        {
            r.perms.replace_range(1..2, "-");
        }
        let shadow = self.shadow.as_ref().expect("checked by the caller");
        differences.extend(compare(shadow.regions(), &kernel));
        Ok((kernel, differences, pfn_checks))
    }

    fn report_all(&mut self, differences: &[Difference], kernel: Vec<maps::Region>, last: &Event, out: &mut Output) -> Result<()> {
        if differences.is_empty() {
            return Ok(());
        }
        self.stats.mismatches += differences.len() as u64;
        for d in differences {
            self.report(d, last, out)?;
        }
        // Adopt the kernel's view so the next checkpoint reports only new differences.
        let start_brk = procfs::process::Process::new(self.pid as i32)
            .and_then(|p| p.stat())
            .map(|s| s.start_brk.unwrap_or(0))
            .unwrap_or(0);
        self.shadow = Some(ShadowSpace::seed(kernel, start_brk));
        Ok(())
    }

    /// Present page-cache pages of the file mappings against the PFNs the page_cache
    /// events reported for the same (device, inode, index). Pages that are present but
    /// not file pages are private copies (copy-on-write) and are not compared.
    fn check_file_pfns(&self, kernel: &[maps::Region]) -> Result<(Vec<Difference>, u64)> {
        let mut out = Vec::new();
        let mut checked = 0;
        if self.file_pfns.is_empty() {
            return Ok((out, checked));
        }
        let mut pagemap = None;
        for r in kernel.iter().filter(|r| r.inode != 0) {
            let first_index = r.offset / PAGE;
            let pages = r.len() / PAGE;
            let known: Vec<(u64, u64)> = (0..pages)
                .filter_map(|k| self.file_pfns.get(&(r.dev, r.inode, first_index + k)).map(|p| (k, *p)))
                .collect();
            if known.is_empty() {
                continue;
            }
            let pagemap = match &mut pagemap {
                Some(p) => p,
                None => pagemap.insert(
                    procfs::process::Process::new(self.pid as i32)
                        .and_then(|p| p.pagemap())
                        .with_context(|| format!("opening /proc/{}/pagemap", self.pid))?,
                ),
            };
            let first_page = (r.start / PAGE) as usize;
            for (k, expected) in known {
                let info = pagemap
                    .get_info(first_page + k as usize)
                    .with_context(|| format!("reading /proc/{}/pagemap", self.pid))?;
                let PageInfo::MemoryPage(flags) = info else { continue };
                if !flags.contains(MemoryPageFlags::PRESENT) || !flags.contains(MemoryPageFlags::FILE) {
                    continue;
                }
                checked += 1;
                let found = flags.get_page_frame_number().0;
                if found != expected {
                    let addr = r.start + k * PAGE;
                    out.push(Difference {
                        start: addr,
                        end: addr + PAGE,
                        field: "pfn",
                        expected: format!("{expected:#x}"),
                        found: format!("{found:#x}"),
                    });
                }
            }
        }
        Ok((out, checked))
    }

    fn report(&self, d: &Difference, last: &Event, out: &mut Output) -> Result<()> {
        let record = MismatchRecord {
            record_type: "mismatch",
            pid: self.pid,
            checkpoint: self.stats.checkpoints,
            after_probe: last.probe().name(),
            after_ts_ns: last.header().ts_ns,
            start: Hex(d.start),
            end: Hex(d.end),
            field: d.field,
            expected: &d.expected,
            found: &d.found,
        };
        let source = if d.field == "pfn" { "pagemap" } else { "maps" };
        eprintln!(
            "mmap-trace: MISMATCH at checkpoint {} (after {} at {} ns): {:#x}-{:#x} {}: events imply {:?}, /proc/{}/{source} shows {:?}",
            record.checkpoint, record.after_probe, record.after_ts_ns, d.start, d.end, d.field, d.expected, self.pid, d.found
        );
        out.record(&record).or_else(ignore_closed_output)?;
        Ok(())
    }
}

/// A thread's syscall event with the kernel-probe events its call produced before it.
struct Unit {
    events: Vec<Event>,
    tid: u32,
    enter_ns: u64,
    exit_ns: u64,
    /// exec replaces the whole address space: never reordered.
    pinned: bool,
}

fn units(events: &[Event]) -> Vec<Unit> {
    let mut waiting: Vec<(u32, Vec<Event>)> = Vec::new();
    let mut units = Vec::new();
    for event in events {
        let h = event.header();
        let mut taken = || {
            waiting.iter().position(|(t, _)| *t == h.tid).map(|i| waiting.swap_remove(i).1).unwrap_or_default()
        };
        match event {
            Event::Syscall(_) | Event::Mmap(_) => {
                let enter_ns = event.syscall().map_or(h.ts_ns, |s| s.enter_ts_ns);
                let mut evs = taken();
                evs.push(*event);
                units.push(Unit { events: evs, tid: h.tid, enter_ns, exit_ns: h.ts_ns, pinned: false });
            }
            Event::Exec(_) => {
                let mut evs = taken();
                evs.push(*event);
                units.push(Unit { events: evs, tid: h.tid, enter_ns: h.ts_ns, exit_ns: h.ts_ns, pinned: true });
            }
            _ => match waiting.iter_mut().find(|(t, _)| *t == h.tid) {
                Some((_, evs)) => evs.push(*event),
                None => waiting.push((h.tid, vec![*event])),
            },
        }
    }
    for (tid, evs) in waiting {
        let ts = evs[0].header().ts_ns;
        units.push(Unit { events: evs, tid, enter_ns: ts, exit_ns: ts, pinned: false });
    }
    units
}

/// Orders of `units` that respect each thread's order and real time, exit order first;
/// only the exit order for batches too large to search or holding an exec.
fn serial_orders(units: &[Unit]) -> Vec<Vec<usize>> {
    const MAX_ORDERS: usize = 720;
    let identity: Vec<usize> = (0..units.len()).collect();
    if units.len() > 6 || units.iter().any(|u| u.pinned) {
        return vec![identity];
    }
    // i must come before j (i < j in exit order) when the same thread made both, or i
    // had returned before j was entered.
    let before = |i: usize, j: usize| {
        i < j && (units[i].tid == units[j].tid || units[i].exit_ns < units[j].enter_ns)
    };
    let mut orders = Vec::new();
    let mut current = Vec::new();
    let mut used = vec![false; units.len()];
    fn search(
        n: usize,
        before: &dyn Fn(usize, usize) -> bool,
        current: &mut Vec<usize>,
        used: &mut Vec<bool>,
        orders: &mut Vec<Vec<usize>>,
    ) {
        if orders.len() >= MAX_ORDERS {
            return;
        }
        if current.len() == n {
            orders.push(current.clone());
            return;
        }
        for j in 0..n {
            if used[j] || (0..n).any(|i| !used[i] && i != j && before(i, j)) {
                continue;
            }
            used[j] = true;
            current.push(j);
            search(n, before, current, used, orders);
            current.pop();
            used[j] = false;
        }
    }
    search(units.len(), &before, &mut current, &mut used, &mut orders);
    orders
}

fn apply_syscall(shadow: &mut ShadowSpace, e: &SyscallEvent, pid: u32) {
    let a = e.args;
    match mmap_trace_common::Probe::from_u32(e.header.probe) {
        Some(Probe::Mmap) => {
            let file = (a[3] & libc::MAP_ANONYMOUS as u64 == 0)
                .then(|| file_identity(pid, a[4] as i32))
                .flatten();
            shadow.mmap(e.ret as u64, a[1], a[2], a[3], a[5], file);
        }
        Some(Probe::Munmap) => shadow.munmap(a[0], a[1]),
        Some(Probe::Mprotect) => shadow.mprotect(a[0], a[1], a[2]),
        Some(Probe::Mremap) => shadow.mremap(a[0], a[1], a[2], a[3], e.ret as u64),
        Some(Probe::Brk) => shadow.brk(e.ret as u64),
        _ => {}
    }
}

/// The file behind `fd` now: the process is stopped right after its mmap, so the fd is
/// the one it mapped.
fn file_identity(pid: u32, fd: i32) -> Option<FileIdentity> {
    let link = format!("/proc/{pid}/fd/{fd}");
    let meta = std::fs::metadata(&link).ok()?;
    let path = std::fs::read_link(&link).ok()?;
    let dev = meta.dev();
    Some(FileIdentity {
        dev: (libc::major(dev), libc::minor(dev)),
        inode: meta.ino(),
        path: path.display().to_string(),
        overlay: on_overlayfs(&link),
    })
}

/// Whether `path` (followed) is on overlayfs.
fn on_overlayfs(path: &str) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    let Ok(cpath) = std::ffi::CString::new(path) else { return false };
    // SAFETY: statfs into a zeroed struct we own, with a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(cpath.as_ptr(), &mut st) } == 0) && st.f_type as i64 == OVERLAYFS_SUPER_MAGIC
}

/// Waits until every thread of `pid` is stopped; false if the process is gone.
fn wait_stopped(pid: u32) -> Result<bool> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let Ok(process) = procfs::process::Process::new(pid as i32) else {
            return Ok(false);
        };
        let Ok(tasks) = process.tasks() else { return Ok(false) };
        let mut all_stopped = true;
        let mut any = false;
        for task in tasks.flatten() {
            match task.stat().map(|s| s.state) {
                Ok('T') | Ok('t') => any = true,
                Ok('Z') | Ok('X') | Err(_) => {}
                Ok(_) => all_stopped = false,
            }
        }
        if !any && all_stopped {
            return Ok(false); // only zombies left
        }
        if all_stopped {
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            bail!("process {pid} did not stop within 10 s after an event (is it being traced by another tool?)");
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn unit(tid: u32, enter_ns: u64, exit_ns: u64) -> Unit {
        Unit { events: Vec::new(), tid, enter_ns, exit_ns, pinned: false }
    }

    #[test]
    fn only_overlapping_calls_of_different_threads_are_reordered() {
        // Two threads' calls overlap in time: both orders, exit order first.
        assert_eq!(serial_orders(&[unit(1, 0, 10), unit(2, 5, 8)]), [vec![0, 1], vec![1, 0]]);
        // The first returned before the second began: one order.
        assert_eq!(serial_orders(&[unit(1, 0, 4), unit(2, 5, 8)]), [vec![0, 1]]);
        // One thread's calls keep their order however the times look.
        assert_eq!(serial_orders(&[unit(1, 0, 10), unit(1, 5, 8)]), [vec![0, 1]]);
        // An exec pins the batch.
        let mut exec = unit(1, 0, 10);
        exec.pinned = true;
        assert_eq!(serial_orders(&[exec, unit(2, 5, 8)]).len(), 1);
    }
}
