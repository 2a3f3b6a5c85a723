//! The text summary: per process, what was called, what it mapped, what was refused.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    bytes, duration,
    input::{Call, Trace},
    model::{Kind, PAGE, Process, Role, Vma, page_up, prot_string},
};
use crate::space::Why;

/// The probes in the order a reader expects them; others follow by name.
const PROBE_ORDER: &[&str] = &[
    "mmap",
    "munmap",
    "mprotect",
    "mremap",
    "brk",
    "exec",
    "mmap_region",
    "remap_pfn_range",
    "driver_mmap",
];

/// What one process's events add up to.
pub struct Stats {
    /// `(probe, events, refused)`.
    pub per_probe: Vec<(String, u64, u64)>,
    /// errno → probe → count.
    pub refused: BTreeMap<String, BTreeMap<String, u64>>,
    /// `(len, addr, event index)` of successful mmap/mremap results, largest first.
    pub largest: Vec<(u64, u64, usize)>,
}

pub fn stats(trace: &Trace, p: &Process) -> Stats {
    let mut per_probe: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut refused: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut largest = Vec::new();
    for &i in &p.events {
        let e = &trace.events[i];
        let entry = per_probe.entry(e.probe.as_str()).or_default();
        entry.0 += 1;
        if let Some(errno) = &e.error {
            entry.1 += 1;
            *refused
                .entry(errno.clone())
                .or_default()
                .entry(e.probe.clone())
                .or_default() += 1;
            continue;
        }
        match e.call {
            Call::Mmap {
                len,
                ret: Some(addr),
                ..
            } => largest.push((page_up(len), addr, i)),
            Call::Mremap {
                new_len,
                ret: Some(addr),
                ..
            } => largest.push((page_up(new_len), addr, i)),
            _ => {}
        }
    }
    largest.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
    let rank = |name: &str| {
        PROBE_ORDER
            .iter()
            .position(|p| *p == name)
            .unwrap_or(PROBE_ORDER.len())
    };
    let mut per_probe: Vec<_> = per_probe
        .into_iter()
        .map(|(k, (n, r))| (k.to_string(), n, r))
        .collect();
    per_probe.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then(a.0.cmp(&b.0)));
    Stats {
        per_probe,
        refused,
        largest,
    }
}

/// `mmap 20 (2 refused), munmap 10`.
pub fn probe_counts(s: &Stats) -> String {
    let parts: Vec<String> = s
        .per_probe
        .iter()
        .map(|(probe, n, refused)| {
            if *refused > 0 {
                format!("{probe} {n} ({refused} refused)")
            } else {
                format!("{probe} {n}")
            }
        })
        .collect();
    parts.join(", ")
}

/// `EINVAL 3 (mmap 2, munmap 1)`.
pub fn refused_counts(s: &Stats) -> String {
    let parts: Vec<String> = s
        .refused
        .iter()
        .map(|(errno, probes)| {
            let total: u64 = probes.values().sum();
            let by: Vec<String> = probes.iter().map(|(p, n)| format!("{p} {n}")).collect();
            format!("{errno} {total} ({})", by.join(", "))
        })
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join("; ")
    }
}

/// `lost: 12 (mmap 10, munmap 2)` or `none`.
pub fn lost_counts(trace: &Trace) -> String {
    let lost = trace.lost();
    if trace.summary.is_none() {
        return "unknown (no summary record: was the trace cut short?)".to_string();
    }
    if lost.is_empty() {
        return "none".to_string();
    }
    let total: u64 = lost.iter().map(|(_, n)| n).sum();
    let by: Vec<String> = lost.iter().map(|(p, n)| format!("{p} {n}")).collect();
    format!("{total} ({}): the timeline is incomplete", by.join(", "))
}

/// Mappings listed per ranking of the cost summary.
const TOP_COSTS: usize = 5;

/// A VMA interval as one line: range, prot, kind and file.
fn vma_line(v: &Vma) -> String {
    let a = &v.attrs;
    let mut what = format!(
        "{:#014x}-{:#014x}  {} {}",
        v.start,
        v.end,
        prot_string(a.prot),
        a.kind.name()
    );
    if let Some(file) = &a.file {
        let _ = write!(what, " {file}");
    }
    what
}

/// `trace --faults`: the resident set by type (first → last record, peak), the mappings
/// with the most faults and those that made the most memory resident (faults on pages
/// not yet present, a page each: for file mappings the kernel's fault-around maps up to
/// 16 pages per fault, so this is their lower bound).
fn costs(out: &mut String, p: &Process, t0: u64) {
    if p.faults == 0 && p.rss.is_empty() {
        return;
    }
    let mut members: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for r in &p.rss {
        members
            .entry(r.member.as_str())
            .and_modify(|(_, last, peak)| {
                *last = r.bytes;
                *peak = (*peak).max(r.bytes);
            })
            .or_insert((r.bytes, r.bytes, r.bytes));
    }
    for (member, (first, last, peak)) in &members {
        let _ = writeln!(
            out,
            "  resident {member:<5} {} → {} (peak {})",
            bytes(*first as u64),
            bytes(*last as u64),
            bytes(*peak as u64)
        );
    }
    let _ = writeln!(
        out,
        "  faults:    {} ({} outside the timeline's mappings: mapped by exec or before the trace, or bad accesses)",
        p.faults, p.faults_outside
    );
    let mut ranked: Vec<&Vma> = p.vmas.iter().filter(|v| v.faults > 0).collect();
    ranked.sort_by(|a, b| b.faults.cmp(&a.faults).then(a.start.cmp(&b.start)));
    if !ranked.is_empty() {
        let _ = writeln!(out, "  top mappings by faults:");
    }
    for v in ranked.iter().take(TOP_COSTS) {
        let io = if v.major > 0 {
            format!(" ({} needed I/O)", v.major)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "    {:>10} faults{io}  {}  first at +{}",
            v.faults,
            vma_line(v),
            duration(v.first_fault.unwrap_or(v.t_start).saturating_sub(t0))
        );
    }
    let placed: Vec<_> = p
        .faults_elsewhere
        .iter()
        .filter(|e| e.vma.end.0 > 0)
        .collect();
    if !placed.is_empty() {
        let _ = writeln!(
            out,
            "  top mappings outside the timeline by faults (mapped by exec or before the trace; placed by trace):"
        );
        for e in placed.iter().take(TOP_COSTS) {
            let io = if e.major > 0 {
                format!(" ({} needed I/O)", e.major)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "    {:>10} faults{io}  {:#014x}-{:#014x}  {} {}  first at +{}",
                e.faults,
                e.vma.start,
                e.vma.end,
                e.vma.perms,
                e.vma.name,
                duration(e.first_fault.saturating_sub(t0))
            );
        }
    }
    ranked.sort_by(|a, b| b.faulted_in.cmp(&a.faulted_in).then(a.start.cmp(&b.start)));
    if ranked.iter().any(|v| v.faulted_in > 0) {
        let _ = writeln!(out, "  top mappings by resident growth (pages faulted in):");
    }
    for v in ranked.iter().take(TOP_COSTS).filter(|v| v.faulted_in > 0) {
        let _ = writeln!(
            out,
            "    {:>10}  {}",
            bytes(v.faulted_in * PAGE),
            vma_line(v)
        );
    }
}

/// `mmap rw- device mmtrace-kmalloc (driver)`: what the model made of a mapping call.
fn describe_mapping(p: &Process, event: usize, probe: &str) -> String {
    let made = p.vmas.iter().find(|v| {
        v.touches.iter().any(|t| {
            t.event == event
                && matches!(
                    t.role,
                    Role::Model(Why::Created | Why::MovedHere | Why::Grown)
                )
        })
    });
    let Some(vma) = made else {
        return probe.to_string();
    };
    let a = &vma.attrs;
    let mut what = format!("{probe} {} {}", prot_string(a.prot), a.kind.name());
    if let Some(file) = &a.file {
        let _ = write!(what, " {file}");
    }
    if a.driver {
        what.push_str(" (driver)");
    }
    what
}

/// Call sites shown in "still mapped at exit, by call site".
const LEAK_SITES: usize = 10;

/// `trace --stacks`: what was still mapped when the trace ended, grouped by the stack of
/// the call that made it (bytes, count, the stack): the mmap-leak view. Only mappings a
/// traced call made with a stack recorded; nothing when the trace has no stacks.
fn leaks(out: &mut String, trace: &Trace, live: &[&Vma]) {
    let mut sites: Vec<(&[String], u64, usize)> = Vec::new();
    for v in live {
        let Some(first) = v.touches.first() else {
            continue;
        };
        let stack = trace.events[first.event].stack.as_slice();
        if stack.is_empty() {
            continue;
        }
        match sites.iter_mut().find(|(s, _, _)| *s == stack) {
            Some(site) => {
                site.1 += v.len();
                site.2 += 1;
            }
            None => sites.push((stack, v.len(), 1)),
        }
    }
    if sites.is_empty() {
        return;
    }
    sites.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)));
    let _ = writeln!(out, "  still mapped at exit, by call site:");
    for (stack, len, count) in sites.iter().take(LEAK_SITES) {
        let _ = writeln!(out, "    {:>10} in {count} VMA(s), mapped at:", bytes(*len));
        for frame in stack.iter() {
            let _ = writeln!(out, "        {frame}");
        }
    }
    if sites.len() > LEAK_SITES {
        let _ = writeln!(out, "    … {} more call sites", sites.len() - LEAK_SITES);
    }
}

pub fn render(trace: &Trace, processes: &[Process], title: &str) -> String {
    let mut out = String::new();
    let t0 = trace.events.iter().map(|e| e.ts_ns).min().unwrap_or(0);
    let _ = writeln!(
        out,
        "report of {title}: {} events, {} process(es)",
        trace.events.len(),
        processes.len()
    );
    if let Some(ended) = trace.ended() {
        let _ = writeln!(out, "ended: {ended}");
    }
    let _ = writeln!(out, "lost events: {}", lost_counts(trace));
    if !trace.unknown.is_empty() {
        let by: Vec<String> = trace
            .unknown
            .iter()
            .map(|(t, n)| format!("{t:?} {n}"))
            .collect();
        let _ = writeln!(out, "records of unknown type (ignored): {}", by.join(", "));
    }
    for p in processes {
        let s = stats(trace, p);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "pid {} ({}): {} events over {}",
            p.pid,
            p.comm,
            p.events.len(),
            duration(p.last_ts - p.first_ts)
        );
        let _ = writeln!(out, "  events:    {}", probe_counts(&s));
        let _ = writeln!(out, "  mapped:    {}", bytes(p.mapped_bytes));
        let _ = writeln!(out, "  unmapped:  {}", bytes(p.unmapped_bytes));
        let _ = writeln!(out, "  refused:   {}", refused_counts(&s));
        let live: Vec<_> = p.vmas.iter().filter(|v| v.t_end.is_none()).collect();
        let driver = p.vmas.iter().filter(|v| v.attrs.driver).count();
        let device = p
            .vmas
            .iter()
            .filter(|v| v.attrs.kind == Kind::Device)
            .count();
        let _ = writeln!(
            out,
            "  timeline:  {} VMA intervals ({device} device, {driver} driver); at the end {} VMAs, {}",
            p.vmas.len(),
            live.len(),
            bytes(live.iter().map(|v| v.len()).sum())
        );
        if !s.largest.is_empty() {
            let _ = writeln!(out, "  largest mappings:");
            for &(len, addr, i) in s.largest.iter().take(5) {
                let e = &trace.events[i];
                let what = describe_mapping(p, i, &e.probe);
                let _ = writeln!(
                    out,
                    "    {:>10}  {addr:#014x}-{:#014x}  {what}  at +{}",
                    bytes(len),
                    addr.saturating_add(len),
                    duration(e.ts_ns - t0)
                );
            }
        }
        leaks(&mut out, trace, &live);
        costs(&mut out, p, t0);
        let mismatches: Vec<_> = trace.mismatches.iter().filter(|m| m.pid == p.pid).collect();
        let _ = writeln!(
            out,
            "  mismatches: {}",
            if mismatches.is_empty() {
                "none".into()
            } else {
                mismatches.len().to_string()
            }
        );
        for m in mismatches.iter().take(10) {
            let _ = writeln!(out, "    line {}: {}", m.line, m.detail);
        }
        if mismatches.len() > 10 {
            let _ = writeln!(out, "    … {} more", mismatches.len() - 10);
        }
    }
    let shown: Vec<u32> = processes.iter().map(|p| p.pid).collect();
    let orphans = trace
        .mismatches
        .iter()
        .filter(|m| !shown.contains(&m.pid) && !trace.events.iter().any(|e| e.pid == m.pid))
        .count();
    if orphans > 0 {
        let _ = writeln!(out, "\nmismatches of processes without events: {orphans}");
    }
    out
}
