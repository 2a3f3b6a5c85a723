//! The HTML report: one self-contained page (inline SVG, CSS and script; nothing is
//! fetched). Per process, x is time and y is address, high addresses on top. Both axes are
//! compressed so everything stays visible: each address row between VMA boundaries gets a
//! height that grows with the log of its size and unmapped stretches over 1 MiB collapse
//! into a labelled gap; on the time axis every event gets a few pixels and long idle
//! stretches are shortened (the tick labels give the real times).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    bytes, duration,
    input::{Mismatch, Trace},
    model::{Kind, Process, Vma, prot_string},
    text,
};
use crate::output::flags;

const WIDTH: f64 = 1360.0;
/// The plot's left edge: region labels live to its left.
const PLOT_LEFT: f64 = 250.0;
const PLOT_RIGHT: f64 = WIDTH - 24.0;
/// Room for the time axis above the plot.
const PLOT_TOP: f64 = 52.0;
/// Room for idle-break labels under the plot.
const BOTTOM_PAD: f64 = 22.0;
/// Unmapped stretches up to this size stay in their region, drawn like a row.
const HOLE_MAX: u64 = 1 << 20;
const GAP_ROW: f64 = 18.0;
const ROW_MIN: f64 = 6.0;
const ROW_PER_DOUBLING: f64 = 2.6;
const CLUSTER_MIN: f64 = 24.0;
/// Taller than this and the rows shrink, shorter and they grow (gaps keep their height).
const MAX_PLOT_HEIGHT: f64 = 2400.0;
const MIN_PLOT_HEIGHT: f64 = 480.0;
/// Every event step gets at least this much of the time axis, when it fits.
const EVENT_STEP: f64 = 7.0;
/// The right edge past the last event: where still-mapped VMAs end.
const END_PAD: f64 = 26.0;

pub fn render(trace: &Trace, processes: &[Process], title: &str) -> String {
    let t0 = trace.events.iter().map(|e| e.ts_ns).min().unwrap_or(0);
    let mut data = Data {
        events: Vec::new(),
        vmas: Vec::new(),
        mismatches: Vec::new(),
        event_ids: Vec::new(),
    };
    data.event_ids = vec![None; trace.events.len()];
    let mut body = String::new();
    for p in processes {
        section(&mut body, trace, p, t0, &mut data);
    }
    let json = json!({ "events": data.events, "vmas": data.vmas, "mismatches": data.mismatches });
    // `<` only occurs inside JSON strings, where \u003c means the same: no `</script>`.
    let json = json.to_string().replace('<', "\\u003c");
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mmap-trace report: {title}</title>
<style>
{STYLE}</style></head>
<body>
<header><h1>mmap-trace report <span class="src">{title}</span></h1>
<p class="meta">{events} events · {procs} process(es) · lost events: {lost}{ended}</p>
{legend}
</header>
{body}<div id="tip" role="tooltip"></div>
<script type="application/json" id="report-data">{json}</script>
<script>
{SCRIPT}</script>
</body></html>
"#,
        title = esc(title),
        events = trace.events.len(),
        procs = processes.len(),
        lost = esc(&text::lost_counts(trace)),
        ended = trace
            .ended()
            .map(|e| format!(" · ended: {}", esc(e)))
            .unwrap_or_default(),
        legend = legend(),
    );
    page
}

/// The tooltip data, referenced by index from the SVG (`data-v`, `data-e`, `data-m`).
struct Data {
    events: Vec<Value>,
    vmas: Vec<Value>,
    mismatches: Vec<Value>,
    /// Trace event index → index in `events`, for events already added.
    event_ids: Vec<Option<usize>>,
}

impl Data {
    fn event(&mut self, trace: &Trace, i: usize, t0: u64) -> usize {
        if let Some(id) = self.event_ids[i] {
            return id;
        }
        let e = &trace.events[i];
        let id = self.events.len();
        self.events.push(json!({
            "t": format!("+{}", duration(e.ts_ns - t0)),
            "probe": e.probe,
            "tid": e.tid,
            "line": e.line,
            "detail": e.detail,
            "error": e.error,
        }));
        self.event_ids[i] = Some(id);
        id
    }
}

fn section(out: &mut String, trace: &Trace, p: &Process, t0: u64, data: &mut Data) {
    let stats = text::stats(trace, p);
    let mismatches: Vec<&Mismatch> = trace.mismatches.iter().filter(|m| m.pid == p.pid).collect();
    let live = p.vmas.iter().filter(|v| v.t_end.is_none()).count();
    let _ = write!(
        out,
        r#"<section class="process" id="pid-{pid}">
<h2>pid {pid} <span class="comm">{comm}</span></h2>
<p class="stats"><b>{n} events</b> over {span}: {counts}<br>
mapped {mapped}, unmapped {unmapped} · refused: {refused} · {bars} VMA intervals, {live} mapped at the end{mm}</p>
"#,
        pid = p.pid,
        comm = esc(&p.comm),
        n = p.events.len(),
        span = duration(p.last_ts - p.first_ts),
        counts = esc(&text::probe_counts(&stats)),
        mapped = bytes(p.mapped_bytes),
        unmapped = bytes(p.unmapped_bytes),
        refused = esc(&text::refused_counts(&stats)),
        bars = p.vmas.len(),
        mm = if mismatches.is_empty() {
            String::new()
        } else {
            format!(
                r#" · <span class="bad">{} verify mismatch(es)</span>"#,
                mismatches.len()
            )
        },
    );
    if p.vmas.is_empty() {
        out.push_str("<p class=\"empty\">No mappings: this process made no successful calls the model could place.</p>\n</section>\n");
        return;
    }
    let addr = AddrAxis::new(&p.vmas);
    let mut times: Vec<u64> = p.events.iter().map(|&i| trace.events[i].ts_ns).collect();
    times.extend(
        p.vmas
            .iter()
            .flat_map(|v| [Some(v.t_start), v.t_end])
            .flatten(),
    );
    times.extend(mismatches.iter().filter_map(|m| m.ts_ns));
    // The resident-set curve's span (not every record: each would widen the axis).
    times.extend(p.rss.first().map(|r| r.ts_ns));
    times.extend(p.rss.last().map(|r| r.ts_ns));
    let time = TimeAxis::new(times);
    rss_curve(out, p, &time);
    let height = addr.bottom + BOTTOM_PAD;
    let _ = writeln!(
        out,
        r#"<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}">"#
    );
    regions(out, &addr, &p.vmas);
    time_axis(out, &time, trace, p, t0, addr.bottom, data);
    out.push_str("<g class=\"bars\">\n");
    let mut labels = String::new();
    for vma in &p.vmas {
        let flagged = mismatches
            .iter()
            .any(|m| overlaps_mismatch(vma, m, time.last));
        let (x0, y0, x1, y1) = bar(out, vma, &addr, &time, flagged, trace, t0, data);
        bar_label(&mut labels, vma, x0, y0, x1, y1);
    }
    out.push_str("</g>\n<g class=\"labels\">\n");
    out.push_str(&labels);
    out.push_str("</g>\n");
    for m in &mismatches {
        mismatch_mark(out, m, &addr, &time, data);
    }
    out.push_str("</svg>\n");
    if !mismatches.is_empty() {
        out.push_str(
            "<table class=\"mismatches\"><tr><th>line</th><th>verify mismatch</th></tr>\n",
        );
        for m in &mismatches {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td></tr>",
                m.line,
                esc(&m.detail)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</section>\n");
}

/// Height of the resident-set plot above a process's timeline.
const RSS_HEIGHT: f64 = 120.0;
const RSS_TOP: f64 = 14.0;
const RSS_BOTTOM: f64 = RSS_HEIGHT - 10.0;

/// The process's resident memory by type (`trace --faults`' rss records) over the same
/// time axis as its timeline: a step line per type, each record exact at its instant.
/// Each line carries its records (`data-ts`, `data-bytes`) for tests and readers.
fn rss_curve(out: &mut String, p: &Process, time: &TimeAxis) {
    if p.rss.is_empty() {
        return;
    }
    let peak = p.rss.iter().map(|r| r.bytes).max().unwrap_or(0).max(1);
    let y = |b: i64| RSS_BOTTOM - (RSS_BOTTOM - RSS_TOP) * b.max(0) as f64 / peak as f64;
    let _ = writeln!(
        out,
        r#"<svg class="rss" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{RSS_HEIGHT}" viewBox="0 0 {WIDTH} {RSS_HEIGHT}"><text class="axis-title" x="{PLOT_LEFT}" y="10">resident memory by type (kmem/rss_stat; 0 – {top})</text><line class="tick" x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{RSS_BOTTOM}" y2="{RSS_BOTTOM}"/>"#,
        top = bytes(peak as u64),
    );
    let mut members: Vec<&str> = p.rss.iter().map(|r| r.member.as_str()).collect();
    members.sort_unstable();
    members.dedup();
    for (k, member) in members.iter().enumerate() {
        let points: Vec<_> = p.rss.iter().filter(|r| r.member == *member).collect();
        let mut d = String::new();
        let mut ts = String::new();
        let mut values = String::new();
        for (i, r) in points.iter().enumerate() {
            let (x, yy) = (time.x(r.ts_ns), y(r.bytes));
            let _ = if i == 0 {
                write!(d, "M{x:.1} {yy:.1}")
            } else {
                write!(d, "H{x:.1}V{yy:.1}")
            };
            let sep = if i == 0 { "" } else { " " };
            let _ = write!(ts, "{sep}{}", r.ts_ns);
            let _ = write!(values, "{sep}{}", r.bytes);
        }
        let last = points.last().map_or(0, |r| r.bytes);
        let _ = writeln!(
            out,
            r#"<path class="rss-line rss-{member}" d="{d}" data-member="{member}" data-ts="{ts}" data-bytes="{values}"/><text class="rss-label rss-{member}" x="{lx:.1}" y="{ly:.1}">{member} {now}</text>"#,
            lx = PLOT_LEFT - 8.0,
            ly = RSS_TOP + 12.0 + 14.0 * k as f64,
            now = bytes(last.max(0) as u64),
        );
    }
    out.push_str("</svg>\n");
}

/// A mismatch's range overlaps the VMA at the time verify compared (or at the end).
fn overlaps_mismatch(vma: &Vma, m: &Mismatch, last: u64) -> bool {
    let Some(start) = m.addr else { return false };
    let end = m.end.unwrap_or(start + 1);
    let t = m.ts_ns.unwrap_or(last);
    vma.start < end && start < vma.end && vma.t_start <= t && vma.t_end.is_none_or(|e| e > t)
}

/// Draws one VMA bar; returns its box.
#[expect(
    clippy::too_many_arguments,
    reason = "one bar: its geometry, its VMA and the page's shared data"
)]
fn bar(
    out: &mut String,
    vma: &Vma,
    addr: &AddrAxis,
    time: &TimeAxis,
    flagged: bool,
    trace: &Trace,
    t0: u64,
    data: &mut Data,
) -> (f64, f64, f64, f64) {
    let a = &vma.attrs;
    let x0 = time.x(vma.t_start);
    let x1 = vma.t_end.map_or(time.end_x, |t| time.x(t)).max(x0 + 2.0);
    let (y0, y1) = (addr.y(vma.end), addr.y(vma.start));
    let prot_class = match a.prot {
        0 => "p-none",
        p if p & 4 != 0 => "p-x",
        p if p & 2 != 0 => "p-rw",
        _ => "p-r",
    };
    let mut classes = format!("vma k-{} {prot_class}", a.kind.name());
    if a.driver {
        classes.push_str(" driver");
    }
    if flagged {
        classes.push_str(" mismatch");
    }
    if vma.t_end.is_none() {
        classes.push_str(" live");
    }
    let touches: Vec<Value> = vma
        .touches
        .iter()
        .map(|t| json!([data.event(trace, t.event, t0), t.role.name()]))
        .collect();
    let id = data.vmas.len();
    data.vmas.push(json!({
        "range": format!("{:#x}-{:#x}", vma.start, vma.end),
        "size": bytes(vma.len()),
        "kind": kind_label(a.kind),
        "prot": prot_string(a.prot),
        "span": format!(
            "+{} → {}",
            duration(vma.t_start - t0),
            vma.t_end.map_or("still mapped at the end".to_string(), |e| format!("+{}", duration(e - t0)))
        ),
        "file": a.file,
        "vm_flags": a.vm_flags.map(|f| format!("{} ({f:#x})", flags::decode(flags::VM, f))),
        "pfns": a.pfns.iter().map(|r| format!("{:#x} → pfn {:#x} ({})", r.addr, r.pfn, bytes(r.size))).collect::<Vec<_>>(),
        "driver": a.driver,
        "mismatch": flagged,
        "touches": touches,
        "elided": vma.elided,
        // `trace --stacks`: the stack of the call that made the mapping.
        "stack": vma.touches.first().map(|t| &trace.events[t.event].stack),
        "faults": vma.faults,
        "faulted_in": vma.faulted_in,
        "major": vma.major,
        "first_touch": vma.first_fault.map(|t| format!("+{}", duration(t.saturating_sub(t0)))),
    }));
    let _ = writeln!(
        out,
        r#"<rect class="{classes}" x="{x0:.1}" y="{y0:.1}" width="{w:.1}" height="{h:.1}" data-v="{id}" data-start="{s:#x}" data-end="{e:#x}" data-kind="{k}" data-prot="{pr}" data-t0="{ts}" data-t1="{te}" data-faults="{faults}"/>"#,
        faults = vma.faults,
        w = x1 - x0,
        h = (y1 - y0).max(1.0),
        s = vma.start,
        e = vma.end,
        k = a.kind.name(),
        pr = prot_string(a.prot),
        ts = vma.t_start,
        te = vma.t_end.map_or(String::new(), |t| t.to_string()),
    );
    (x0, y0, x1, y1.max(y0 + 1.0))
}

/// Names a bar where it fits inside; device and driver mappings are always named (beside
/// the bar when it is too small), so they stand out.
fn bar_label(out: &mut String, vma: &Vma, x0: f64, y0: f64, x1: f64, y1: f64) {
    let a = &vma.attrs;
    let special = a.kind == Kind::Device || a.driver;
    let name = a
        .file
        .as_deref()
        .map(|f| f.rsplit('/').next().unwrap_or(f).to_string());
    let mut label = match (&name, a.kind) {
        (Some(n), _) => format!("{n} {}", prot_string(a.prot)),
        (None, kind) => format!("{} {}", kind.name(), prot_string(a.prot)),
    };
    if a.driver {
        label.push_str(" · driver");
    }
    if let Some(first) = a.pfns.first() {
        let _ = write!(label, " · pfn {:#x}", first.pfn);
    }
    let (w, h) = (x1 - x0, y1 - y0);
    let text_w = 6.3 * label.chars().count() as f64 + 8.0;
    let y = (y0 + y1) / 2.0 + 4.0;
    if h >= 12.0 && w >= text_w {
        let tone = if a.prot & 4 != 0 { "light" } else { "dark" };
        let _ = writeln!(
            out,
            r#"<text class="blabel {tone}" x="{x:.1}" y="{y:.1}">{t}</text>"#,
            x = x0 + 4.0,
            t = esc(&label)
        );
    } else if special {
        let (x, anchor) = if x1 + text_w < PLOT_RIGHT {
            (x1 + 5.0, "start")
        } else {
            (x0 - 5.0, "end")
        };
        let _ = writeln!(
            out,
            r#"<text class="blabel out" x="{x:.1}" y="{y:.1}" text-anchor="{anchor}">{t}</text>"#,
            t = esc(&label)
        );
    }
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Anon => "anonymous",
        Kind::File => "file",
        Kind::Device => "device / PFNMAP",
        Kind::Heap => "heap (brk)",
        Kind::Stack => "stack",
    }
}

fn mismatch_mark(
    out: &mut String,
    m: &Mismatch,
    addr: &AddrAxis,
    time: &TimeAxis,
    data: &mut Data,
) {
    let id = data.mismatches.len();
    data.mismatches
        .push(json!({ "line": m.line, "detail": m.detail }));
    let x = m.ts_ns.map_or(time.end_x, |t| time.x(t));
    let Some(start) = m.addr else {
        let _ = writeln!(
            out,
            r#"<g class="mm" data-m="{id}"><line x1="{x:.1}" x2="{x:.1}" y1="{PLOT_TOP}" y2="{:.1}"/></g>"#,
            addr.bottom
        );
        return;
    };
    let (y0, y1) = (addr.y(m.end.unwrap_or(start)), addr.y(start));
    let yc = (y0 + y1) / 2.0;
    let _ = writeln!(
        out,
        r#"<g class="mm" data-m="{id}"><line x1="{x:.1}" x2="{x:.1}" y1="{y0:.1}" y2="{y1:.1}"/><path d="M{x:.1} {a:.1}l7 7l-7 7l-7-7z"/></g>"#,
        a = yc - 7.0,
    );
}

/// One row of the address axis, high addresses first.
#[derive(Debug)]
struct Row {
    lo: u64,
    hi: u64,
    top: f64,
    height: f64,
    gap: bool,
}

/// Rows between gaps: one labelled region.
#[derive(Debug)]
struct Region {
    lo: u64,
    hi: u64,
    top: f64,
    bottom: f64,
}

struct AddrAxis {
    rows: Vec<Row>,
    regions: Vec<Region>,
    bottom: f64,
}

impl AddrAxis {
    fn new(vmas: &[Vma]) -> Self {
        let mut bounds: Vec<u64> = vmas.iter().flat_map(|v| [v.start, v.end]).collect();
        bounds.sort_unstable();
        bounds.dedup();
        // How many intervals cover each elementary stretch between two bounds.
        let mut depth = vec![0i64; bounds.len() + 1];
        for v in vmas {
            let at = |a: u64| bounds.binary_search(&a).expect("a bound");
            depth[at(v.start)] += 1;
            depth[at(v.end)] -= 1;
        }
        let mut rows = Vec::new();
        let mut covered = 0;
        for k in 0..bounds.len().saturating_sub(1) {
            covered += depth[k];
            let (lo, hi) = (bounds[k], bounds[k + 1]);
            let pages = ((hi - lo) / super::model::PAGE).max(1) as f64;
            let used = covered > 0;
            let gap = !used && hi - lo > HOLE_MAX;
            let height = if gap {
                GAP_ROW
            } else if used {
                ROW_MIN + ROW_PER_DOUBLING * pages.log2()
            } else {
                // A small hole inside a region: visible, but thinner than a mapping.
                2.0 + 1.2 * pages.log2()
            };
            rows.push(Row {
                lo,
                hi,
                top: 0.0,
                height,
                gap,
            });
        }
        rows.reverse();
        // Regions: maximal runs of non-gap rows; each tall enough for its label.
        let mut spans = Vec::new();
        let mut k = 0;
        while k < rows.len() {
            if rows[k].gap {
                k += 1;
                continue;
            }
            let first = k;
            while k < rows.len() && !rows[k].gap {
                k += 1;
            }
            spans.push((first, k));
        }
        for &(a, b) in &spans {
            let h: f64 = rows[a..b].iter().map(|r| r.height).sum();
            if h < CLUSTER_MIN {
                rows[a..b]
                    .iter_mut()
                    .for_each(|r| r.height *= CLUSTER_MIN / h);
            }
        }
        // Small pictures grow (up to 4x) to a readable height, big ones shrink.
        let content: f64 = rows.iter().filter(|r| !r.gap).map(|r| r.height).sum();
        let gaps: f64 = rows.iter().filter(|r| r.gap).map(|r| r.height).sum();
        let scale = if content + gaps > MAX_PLOT_HEIGHT {
            ((MAX_PLOT_HEIGHT - gaps) / content).max(0.2)
        } else if content + gaps < MIN_PLOT_HEIGHT && content > 0.0 {
            ((MIN_PLOT_HEIGHT - gaps) / content).clamp(1.0, 4.0)
        } else {
            1.0
        };
        rows.iter_mut()
            .filter(|r| !r.gap)
            .for_each(|r| r.height = (r.height * scale).max(1.5));
        let mut y = PLOT_TOP;
        for r in &mut rows {
            r.top = y;
            y += r.height;
        }
        let regions = spans
            .iter()
            .map(|&(a, b)| Region {
                lo: rows[b - 1].lo,
                hi: rows[a].hi,
                top: rows[a].top,
                bottom: rows[b - 1].top + rows[b - 1].height,
            })
            .collect();
        Self {
            rows,
            regions,
            bottom: y,
        }
    }

    /// The y of an address: exact at row edges, linear inside a row, clamped outside.
    fn y(&self, addr: u64) -> f64 {
        let Some(first) = self.rows.first() else {
            return PLOT_TOP;
        };
        if addr >= first.hi {
            return first.top;
        }
        // Rows run from high to low addresses.
        let k = self.rows.partition_point(|r| r.lo > addr);
        match self.rows.get(k) {
            Some(r) => r.top + r.height * (r.hi - addr) as f64 / (r.hi - r.lo) as f64,
            None => self.bottom,
        }
    }
}

/// Piecewise-linear time: every step between consecutive event times gets at least
/// `EVENT_STEP` px (when that fits), the rest of the width is shared by real duration with
/// idle stretches capped at 1/5 of the span.
struct TimeAxis {
    times: Vec<u64>,
    xs: Vec<f64>,
    /// Steps that were shortened: `(index of the step's end, real duration)`.
    breaks: Vec<(usize, u64)>,
    last: u64,
    end_x: f64,
}

impl TimeAxis {
    fn new(mut times: Vec<u64>) -> Self {
        times.sort_unstable();
        times.dedup();
        let width = PLOT_RIGHT - END_PAD - PLOT_LEFT;
        let steps = times.len().saturating_sub(1);
        let span = times.last().copied().unwrap_or(0) - times.first().copied().unwrap_or(0);
        let cap = (span / 5).max(1);
        let capped: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).min(cap)).collect();
        let total: u64 = capped.iter().sum();
        let step = if steps == 0 {
            0.0
        } else {
            EVENT_STEP.min(0.4 * width / steps as f64)
        };
        let share = width - step * steps as f64;
        let mut xs = vec![PLOT_LEFT];
        for c in &capped {
            let dx = step
                + if total > 0 {
                    share * *c as f64 / total as f64
                } else {
                    share / steps as f64
                };
            xs.push(xs.last().expect("non-empty") + dx);
        }
        let breaks = times
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[1] - w[0] > cap && span > 0)
            .map(|(k, w)| (k + 1, w[1] - w[0]))
            .collect();
        let last = times.last().copied().unwrap_or(0);
        let end_x = xs.last().copied().unwrap_or(PLOT_LEFT) + END_PAD;
        Self {
            times,
            xs,
            breaks,
            last,
            end_x,
        }
    }

    fn x(&self, t: u64) -> f64 {
        match self.times.binary_search(&t) {
            Ok(k) => self.xs[k],
            Err(0) => PLOT_LEFT,
            Err(k) if k >= self.times.len() => self.xs[k - 1],
            Err(k) => {
                let (t0, t1) = (self.times[k - 1], self.times[k]);
                self.xs[k - 1] + (self.xs[k] - self.xs[k - 1]) * (t - t0) as f64 / (t1 - t0) as f64
            }
        }
    }
}

/// Region backgrounds and labels on the left, gap markers between regions.
fn regions(out: &mut String, addr: &AddrAxis, vmas: &[Vma]) {
    out.push_str("<g class=\"axis-y\">\n");
    for (k, r) in addr.regions.iter().enumerate() {
        let h = r.bottom - r.top;
        let (name, full) = region_name(vmas, r.lo, r.hi);
        let _ = writeln!(
            out,
            r#"<rect class="region{alt}" x="{PLOT_LEFT}" y="{top:.1}" width="{w:.1}" height="{h:.1}"/>"#,
            alt = if k % 2 == 1 { " alt" } else { "" },
            top = r.top,
            w = PLOT_RIGHT - PLOT_LEFT,
        );
        let mid = r.top + h / 2.0;
        let two_lines = h >= 30.0;
        let name_y = if two_lines { mid - 2.0 } else { mid + 4.0 };
        let _ = write!(
            out,
            r#"<g class="rlabel"><title>{full}
{lo:#x}-{hi:#x} ({size})</title><text class="rname" x="{x:.1}" y="{name_y:.1}">{name}</text>"#,
            full = esc(&full),
            lo = r.lo,
            hi = r.hi,
            size = bytes(r.hi - r.lo),
            x = PLOT_LEFT - 8.0,
            name = esc(&name),
        );
        if two_lines {
            let _ = write!(
                out,
                r#"<text class="raddr" x="{x:.1}" y="{y:.1}">{lo:#x} · {size}</text>"#,
                x = PLOT_LEFT - 8.0,
                y = mid + 11.0,
                lo = r.lo,
                size = bytes(r.hi - r.lo),
            );
        }
        out.push_str("</g>\n");
    }
    for row in addr.rows.iter().filter(|r| r.gap) {
        let y = row.top + row.height / 2.0;
        let _ = writeln!(
            out,
            r#"<g class="gap"><line x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{y:.1}" y2="{y:.1}"/><text x="{x:.1}" y="{ty:.1}">⋯ {size} unmapped ⋯</text></g>"#,
            x = PLOT_LEFT - 8.0,
            ty = y + 4.0,
            size = bytes(row.hi - row.lo),
        );
    }
    out.push_str("</g>\n");
}

/// A region's label: the kind with the most bytes (for files, the file with the most
/// bytes; device and driver bars carry their own labels); the full file list for the hover
/// title.
fn region_name(vmas: &[Vma], lo: u64, hi: u64) -> (String, String) {
    let inside: Vec<&Vma> = vmas.iter().filter(|v| v.start < hi && lo < v.end).collect();
    let mut files: Vec<(&str, u64)> = Vec::new();
    for v in &inside {
        if let Some(f) = v.attrs.file.as_deref() {
            match files.iter_mut().find(|(name, _)| *name == f) {
                Some(entry) => entry.1 += v.len(),
                None => files.push((f, v.len())),
            }
        }
    }
    // Pseudo-files (`pipe:[123]`, `anon_inode:[…]`) name a region last.
    files.sort_by_key(|(f, n)| (f.contains(":["), std::cmp::Reverse(*n)));
    let full = if files.is_empty() {
        "anonymous memory".to_string()
    } else {
        files.iter().map(|(f, _)| *f).collect::<Vec<_>>().join("\n")
    };
    let base = |f: &str| f.rsplit('/').next().unwrap_or(f).to_string();
    let bytes_of = |k: Kind| {
        inside
            .iter()
            .filter(|v| v.attrs.kind == k)
            .map(|v| v.len())
            .sum::<u64>()
    };
    let dominant = Kind::ALL
        .into_iter()
        .max_by_key(|k| bytes_of(*k))
        .unwrap_or(Kind::Anon);
    let top_file = files.first().map(|(f, _)| base(f));
    let name = match dominant {
        Kind::Heap => "[heap]".to_string(),
        Kind::Stack => "[stack]".to_string(),
        Kind::File | Kind::Device => match files.len() {
            0 | 1 => top_file.unwrap_or_else(|| "file".into()),
            n => format!("{} +{}", top_file.unwrap_or_default(), n - 1),
        },
        Kind::Anon => "[anon]".to_string(),
    };
    (truncate(&name, 30), full)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

/// Ticks with real times, idle breaks, exec markers and one tick per event (the rug).
fn time_axis(
    out: &mut String,
    time: &TimeAxis,
    trace: &Trace,
    p: &Process,
    t0: u64,
    bottom: f64,
    data: &mut Data,
) {
    out.push_str("<g class=\"axis-x\">\n");
    let _ = writeln!(
        out,
        r#"<text class="axis-title" x="{x:.1}" y="14">address ↑ · time → (since the trace began; idle stretches shortened)</text>"#,
        x = PLOT_LEFT
    );
    let mut last_label = f64::NEG_INFINITY;
    for (k, &t) in time.times.iter().enumerate() {
        let x = time.xs[k];
        let is_last = k + 1 == time.times.len();
        if x - last_label < 110.0 && !(is_last && x - last_label > 70.0) {
            continue;
        }
        last_label = x;
        let _ = writeln!(
            out,
            r#"<line class="tick" x1="{x:.1}" x2="{x:.1}" y1="{y0:.1}" y2="{bottom:.1}"/><text class="tlabel" x="{x:.1}" y="30">+{label}</text>"#,
            y0 = PLOT_TOP - 6.0,
            label = duration(t - t0),
        );
    }
    for &(k, real) in &time.breaks {
        let x = (time.xs[k - 1] + time.xs[k]) / 2.0;
        let _ = writeln!(
            out,
            r#"<g class="break"><line x1="{x:.1}" x2="{x:.1}" y1="{PLOT_TOP}" y2="{bottom:.1}"/><text x="{x:.1}" y="{ty:.1}">≈ {real} idle</text></g>"#,
            ty = bottom + 13.0,
            real = duration(real),
        );
    }
    let _ = writeln!(
        out,
        r#"<text class="tlabel end" x="{x:.1}" y="{y:.1}">end</text>"#,
        x = time.end_x - 2.0,
        y = PLOT_TOP - 8.0,
    );
    for &i in &p.events {
        let e = &trace.events[i];
        let x = time.x(e.ts_ns);
        let id = data.event(trace, i, t0);
        let class = if e.refused() { "ev refused" } else { "ev" };
        if e.probe == "exec" {
            let _ = writeln!(
                out,
                r#"<g class="exec" data-e="{id}"><line x1="{x:.1}" x2="{x:.1}" y1="{y0:.1}" y2="{bottom:.1}"/><text x="{tx:.1}" y="{ty:.1}">exec</text></g>"#,
                y0 = PLOT_TOP - 16.0,
                tx = x + 3.0,
                ty = PLOT_TOP - 8.0,
            );
        }
        let _ = writeln!(
            out,
            r#"<line class="{class} pr-{probe}" data-e="{id}" x1="{x:.1}" x2="{x:.1}" y1="{y0:.1}" y2="{y1:.1}"/>"#,
            probe = esc(&e.probe),
            y0 = PLOT_TOP - 5.0,
            y1 = PLOT_TOP - 1.0,
        );
    }
    out.push_str("</g>\n");
}

fn legend() -> String {
    let mut s = String::from("<div class=\"legend\">");
    for kind in Kind::ALL {
        let _ = write!(
            s,
            r#"<span><svg width="22" height="14"><rect class="sw k-{k} p-rw" x="1" y="1" width="20" height="12"/></svg>{label}</span>"#,
            k = kind.name(),
            label = kind_label(kind),
        );
    }
    s.push_str("<span class=\"sep\">prot:</span>");
    for (class, label) in [
        ("p-none", "--- (guard)"),
        ("p-r", "r--"),
        ("p-rw", "rw-"),
        ("p-x", "r-x / rwx"),
    ] {
        let _ = write!(
            s,
            r#"<span><svg width="22" height="14"><rect class="sw k-anon {class}" x="1" y="1" width="20" height="12"/></svg>{label}</span>"#
        );
    }
    s.push_str(concat!(
        r#"<span class="sep"></span>"#,
        r#"<span><svg width="22" height="14"><rect class="sw k-device p-rw driver" x="2" y="2" width="18" height="10"/></svg>driver mapping</span>"#,
        r#"<span><svg width="22" height="16"><g class="mm"><path d="M11 1l7 7l-7 7l-7-7z"/></g></svg>verify mismatch</span>"#,
        r#"<span><svg width="30" height="14"><g class="gap"><line x1="0" x2="30" y1="7" y2="7"/></g></svg>collapsed unmapped gap</span>"#,
        r#"<span><svg width="22" height="14"><g class="break"><line x1="11" x2="11" y1="0" y2="14"/></g></svg>shortened idle time</span>"#,
        r#"<span class="hint">Hover a bar for the events that created, split, moved or removed it (and, for a trace --faults, its page faults and first touch). Bars reaching the right edge are still mapped.</span>"#,
        "</div>"
    ));
    s
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// The page's style and tooltip script, kept as real files so editors and linters read them.
const STYLE: &str = include_str!("assets/report.css");
const SCRIPT: &str = include_str!("assets/report.js");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{input, model};

    const TRACE: &str = r#"{"type":"event","ts_ns":100,"pid":7,"tid":7,"comm":"w<x>","probe":"mmap","addr":"0x0","len":"0x4000","prot":"READ|WRITE","prot_raw":3,"flags":"PRIVATE|ANONYMOUS","flags_raw":34,"fd":-1,"offset":"0x0","ret_addr":"0x7f0000000000"}
{"type":"event","ts_ns":200,"pid":7,"tid":7,"comm":"w<x>","probe":"munmap","addr":"0x7f0000001000","len":"0x1000","ret":0}
{"type":"event","ts_ns":300,"pid":7,"tid":7,"comm":"w<x>","probe":"brk","addr":"0x0","ret_addr":"0x560000000000"}
{"type":"event","ts_ns":5000000300,"pid":7,"tid":7,"comm":"w<x>","probe":"brk","addr":"0x560000021000","ret_addr":"0x560000021000"}
{"type":"mismatch","pid":7,"checkpoint":1,"after_probe":"munmap","after_ts_ns":200,"start":"0x7f0000000000","end":"0x7f0000001000","field":"perms","expected":"rw-p","found":"r--p </script>"}
"#;

    fn page() -> (String, Vec<model::Process>) {
        let trace = input::parse(TRACE).unwrap();
        let processes = model::replay(&trace);
        (render(&trace, &processes, "t.jsonl"), processes)
    }

    #[test]
    fn one_rect_per_interval_and_nothing_external() {
        let (html, processes) = page();
        let expected: usize = processes.iter().map(|p| p.vmas.len()).sum();
        assert_eq!(expected, 4);
        assert_eq!(html.matches("<rect class=\"vma ").count(), expected);
        assert_eq!(
            html.matches("class=\"vma").count(),
            expected,
            "only the bars have class vma"
        );
        let flagged: Vec<_> = html
            .lines()
            .filter(|l| l.starts_with("<rect class=\"vma") && l.contains(" mismatch"))
            .collect();
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert!(
            flagged[0].contains("data-start=\"0x7f0000000000\" data-end=\"0x7f0000001000\""),
            "{flagged:?}"
        );
        for external in ["http://", "https://", "src=", "href=", "@import", "url("] {
            let hits: Vec<_> = html
                .match_indices(external)
                .map(|(i, _)| &html[i.saturating_sub(40)..i + 40])
                .collect();
            // The SVG namespace is an identifier, not a fetch.
            assert!(
                hits.iter().all(|h| h.contains("xmlns=")),
                "{external}: {hits:?}"
            );
        }
        assert!(
            !html.contains("r--p </script>"),
            "a trace string closed the script"
        );
        assert!(html.contains("w&lt;x&gt;"));
        assert!(
            html.contains("≈ 5.000 s idle"),
            "the idle stretch is marked"
        );
    }

    #[test]
    fn address_axis_keeps_order_and_collapses_gaps() {
        let (_, processes) = page();
        let axis = AddrAxis::new(&processes[0].vmas);
        let heap = axis.y(0x5600_0000_0000);
        let anon = axis.y(0x7f00_0000_0000);
        assert!(anon < heap, "higher addresses are drawn higher");
        assert_eq!(axis.rows.iter().filter(|r| r.gap).count(), 1);
        assert_eq!(axis.regions.len(), 2);
        assert!(
            axis.bottom - PLOT_TOP <= MIN_PLOT_HEIGHT + 1.0,
            "{}",
            axis.bottom
        );
        assert!(
            axis.regions
                .iter()
                .all(|r| r.bottom - r.top >= CLUSTER_MIN - 1e-9)
        );
    }

    #[test]
    fn time_axis_is_monotonic_and_fits() {
        let axis = TimeAxis::new(vec![5, 1, 3, 1_000_000, 1_000_010]);
        assert!(axis.xs.windows(2).all(|w| w[1] > w[0]));
        assert!(axis.end_x <= PLOT_RIGHT + 1e-9);
        assert_eq!(axis.breaks.len(), 1);
        assert!(axis.x(2) > axis.x(1) && axis.x(2) < axis.x(3));
        let single = TimeAxis::new(vec![42]);
        assert_eq!(single.x(42), PLOT_LEFT);
    }
}
