//! The host runs: held loops, tracers attached to them, and what each tracer kept.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::Tools;
use crate::cmd;

/// The loop's calls: 16 KiB anonymous mappings, as mmap-trace's JSON writes the length.
const LOOP_LEN_JSON: &str = "\"len\":\"0x4000\"";
const LOOP_LEN: u64 = 16384;
/// How long a tracer may take to attach, or to finish after its target.
const TRACER_TIMEOUT: Duration = Duration::from_secs(120);

/// bpftrace's equivalent of `mmap-trace trace --pid`: entry arguments and return values of
/// mmap and munmap, as text, for one pid ($1).
const BPFTRACE_SCRIPT: &str = r#"tracepoint:syscalls:sys_enter_mmap /pid == $1/ {
  printf("%d %d enter mmap addr=%lx len=%lu prot=%lu flags=%lu fd=%ld off=%lu\n",
         pid, tid, args->addr, args->len, args->prot, args->flags, args->fd, args->off);
}
tracepoint:syscalls:sys_exit_mmap /pid == $1/ { printf("%d %d exit mmap ret=%lx\n", pid, tid, args->ret); }
tracepoint:syscalls:sys_enter_munmap /pid == $1/ {
  printf("%d %d enter munmap addr=%lx len=%lu\n", pid, tid, args->addr, args->len);
}
tracepoint:syscalls:sys_exit_munmap /pid == $1/ { printf("%d %d exit munmap ret=%ld\n", pid, tid, args->ret); }
"#;

/// The same with a user stack on each call (bpftrace's `ustack`: a frame-pointer walk in
/// the kernel, symbolized by bpftrace while the process lives), next to `trace --stacks`.
const BPFTRACE_USTACK_SCRIPT: &str = r#"tracepoint:syscalls:sys_enter_mmap /pid == $1/ {
  printf("%d %d enter mmap addr=%lx len=%lu prot=%lu flags=%lu fd=%ld off=%lu\n%s\n",
         pid, tid, args->addr, args->len, args->prot, args->flags, args->fd, args->off, ustack);
}
tracepoint:syscalls:sys_exit_mmap /pid == $1/ { printf("%d %d exit mmap ret=%lx\n", pid, tid, args->ret); }
tracepoint:syscalls:sys_enter_munmap /pid == $1/ {
  printf("%d %d enter munmap addr=%lx len=%lu\n%s\n", pid, tid, args->addr, args->len, ustack);
}
tracepoint:syscalls:sys_exit_munmap /pid == $1/ { printf("%d %d exit munmap ret=%ld\n", pid, tid, args->ret); }
"#;

/// A loop started but held: `sh` waits for a line on stdin, then execs the workload
/// (same pid, so a tracer can attach to it before the first call).
pub struct HeldLoop {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl HeldLoop {
    pub fn start(workload: &Path, iterations: u64) -> Result<Self> {
        Self::with_args(workload, &["--loop".into(), iterations.to_string()])
    }

    /// The workload with `args`, held the same way.
    pub fn with_args(workload: &Path, args: &[String]) -> Result<Self> {
        let mut child = Command::new("sh")
            .args(["-c", r#"read _ && exec "$0" "$@""#])
            .arg(workload)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting a held loop (sh)")?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Releases every loop at once; seconds from the release to the last exit.
pub fn release(loops: &mut [HeldLoop]) -> Result<f64> {
    let started = Instant::now();
    for l in loops.iter_mut() {
        if let Some(mut stdin) = l.stdin.take() {
            stdin.write_all(b"go\n").context("releasing a held loop")?;
        }
    }
    for l in loops.iter_mut() {
        let status = l.child.wait().context("waiting for a loop")?;
        if !status.success() {
            bail!("the loop (pid {}) failed: {status}", l.pid());
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// How a tracer says that its probes are attached.
enum ReadyOn {
    /// A stderr line containing this text.
    Stderr(&'static str),
    /// It holds this many perf_event fds (bpftrace: one per CPU for its output buffer and
    /// one per tracepoint; it prints nothing unbuffered once attached).
    PerfEvents(usize),
}

/// How a tracer ends once the loop has exited.
enum Stop {
    /// It follows its target and exits by itself.
    Exits,
    /// SIGINT once its output file stops growing (it has printed what it had).
    InterruptWhenQuiet(PathBuf),
    /// SIGINT now (it drains everything itself before exiting).
    Interrupt,
}

/// A tracer running under `/usr/bin/time -f %M`, which reports its peak RSS.
struct Tracer {
    name: &'static str,
    child: Child,
    lines: Receiver<String>,
    stderr: Vec<String>,
    rss_file: PathBuf,
    /// Launch to ready.
    ready: Duration,
}

/// What a finished tracer left behind.
struct Finished {
    stderr: Vec<String>,
    rss_kib: Option<u64>,
    ready: Duration,
}

impl Tracer {
    fn start(
        tools: &Tools,
        name: &'static str,
        program: &Path,
        args: Vec<OsString>,
        ready_on: ReadyOn,
    ) -> Result<Self> {
        let rss_file = tools.scratch.join(format!("{name}.rss"));
        let _ = std::fs::remove_file(&rss_file);
        let mut c = Command::new(&tools.time);
        c.args(["-f", "%M", "-o"])
            .arg(&rss_file)
            .arg(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let what = cmd::describe(&c);
        let launched = Instant::now();
        let mut child = c.spawn().with_context(|| format!("running {what}"))?;
        let stderr = child.stderr.take().context("tracer stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tracer = Tracer {
            name,
            child,
            lines,
            stderr: Vec::new(),
            rss_file,
            ready: Duration::ZERO,
        };
        loop {
            let ready = match &ready_on {
                ReadyOn::Stderr(text) => {
                    match tracer.lines.recv_timeout(Duration::from_millis(1)) {
                        Ok(line) => {
                            let ready = line.contains(text);
                            tracer.stderr.push(line);
                            ready
                        }
                        Err(_) => false,
                    }
                }
                ReadyOn::PerfEvents(wanted) => {
                    tracer.collect_stderr();
                    let ready = tracer
                        .pid()
                        .is_some_and(|pid| perf_event_fds(pid) >= *wanted);
                    if !ready {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    ready
                }
            };
            if ready {
                tracer.ready = launched.elapsed();
                return Ok(tracer);
            }
            if let Some(status) = tracer.child.try_wait()? {
                tracer.collect_stderr();
                bail!(
                    "{name} exited ({status}) before it was ready: {what}\n{}",
                    tracer.stderr.join("\n")
                );
            }
            if launched.elapsed() > TRACER_TIMEOUT {
                let _ = tracer.child.kill();
                bail!("{name} was not ready after {TRACER_TIMEOUT:?}: {what}");
            }
        }
    }

    /// mmap-trace itself (`trace`), ready once it says so.
    fn cli(tools: &Tools, name: &'static str, args: Vec<OsString>) -> Result<Self> {
        Self::start(
            tools,
            name,
            &tools.cli,
            args,
            ReadyOn::Stderr("mmap-trace: ready:"),
        )
    }

    /// The floor's binary (mmap-trace-floor/), ready once it says so.
    fn floor(tools: &Tools, name: &'static str, args: Vec<OsString>) -> Result<Self> {
        Self::start(
            tools,
            name,
            &tools.floor,
            args,
            ReadyOn::Stderr("mmap-trace-floor: ready:"),
        )
    }

    fn collect_stderr(&mut self) {
        self.stderr.extend(self.lines.try_iter());
    }

    fn finish(mut self, stop: Stop) -> Result<Finished> {
        match stop {
            Stop::Exits => {}
            Stop::Interrupt => self.interrupt()?,
            Stop::InterruptWhenQuiet(file) => {
                wait_until_quiet(&file);
                self.interrupt()?;
            }
        }
        let deadline = Instant::now() + TRACER_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("{} did not finish within {TRACER_TIMEOUT:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The reader thread ends at EOF, right after the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.stderr.push(line);
        }
        // bpftrace ends with status 0 on SIGINT; strace and mmap-trace with their own.
        if !status.success() {
            bail!(
                "{} failed ({status}):\n{}",
                self.name,
                self.stderr.join("\n")
            );
        }
        let rss_kib = std::fs::read_to_string(&self.rss_file)
            .ok()
            .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()));
        Ok(Finished {
            stderr: std::mem::take(&mut self.stderr),
            rss_kib,
            ready: self.ready,
        })
    }

    /// The tracer's pid: the child of GNU time.
    fn pid(&self) -> Option<u32> {
        let time_pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{time_pid}/task/{time_pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// SIGINT to the tracer itself (GNU time ignores SIGINT while it waits).
    fn interrupt(&mut self) -> Result<()> {
        self.signal("-INT")
    }

    fn signal(&self, signal: &str) -> Result<()> {
        match self.pid() {
            Some(pid) => cmd::run(Command::new("kill").args([signal, &pid.to_string()])),
            None => Ok(()), // already gone
        }
    }
}

/// A tracer left running by an error is killed, not left attached.
impl Drop for Tracer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.signal("-KILL");
            let _ = self.child.wait();
        }
    }
}

fn perf_event_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.as_os_str() == "anon_inode:[perf_event]")
                .count()
        })
        .unwrap_or(0)
}

/// Waits until `file` has not grown for 300 ms (at most 30 s).
fn wait_until_quiet(file: &Path) {
    let size = || std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = size();
    let mut still_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = size();
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= Duration::from_millis(300) {
            return;
        }
    }
}

/// One variant of the overhead comparison, over all rounds.
#[derive(Default)]
pub struct Variant {
    pub name: &'static str,
    pub version: String,
    pub secs: Vec<f64>,
    /// The loop's calls found in the tracer's output.
    pub kept: Vec<u64>,
    /// Losses the tracer itself reported (None: it reports none).
    pub lost: Vec<Option<u64>>,
    pub rss_kib: Vec<u64>,
    pub ready_ms: Vec<f64>,
}

pub struct Overhead {
    /// Calls each loop makes (2 per iteration).
    pub expected: u64,
    /// untraced, floor, floor + least records, mmap-trace, bpftrace, strace, and the stacks pair.
    pub variants: Vec<Variant>,
}

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Untraced,
    /// Empty programs on mmap-trace's attach points (`mmap-trace-floor`).
    Floor,
    /// The same with the least record of each traced call on sys_exit, read and counted
    /// (`mmap-trace-floor --records`).
    FloorRecords,
    MmapTrace,
    Bpftrace,
    Strace,
    /// `trace --stacks` (issue 16).
    MmapTraceStacks,
    /// bpftrace with `ustack` on each call.
    BpftraceUstack,
    /// `mmap-trace agent` (issue 28): counts and per-process models instead of records,
    /// narrowed by `--comm mmap-workload` (it has no `--pid`).
    MmapTraceAgent,
}

impl Kind {
    /// The variant's row in the tables.
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Untraced => "untraced",
            Kind::Floor => "floor",
            Kind::FloorRecords => "floor + least records",
            Kind::MmapTrace => "mmap-trace",
            Kind::Bpftrace => "bpftrace",
            Kind::Strace => "strace",
            Kind::MmapTraceStacks => "mmap-trace --stacks",
            Kind::BpftraceUstack => "bpftrace ustack",
            Kind::MmapTraceAgent => "mmap-trace agent",
        }
    }
}

const KINDS: [Kind; 9] = [
    Kind::Untraced,
    Kind::Floor,
    Kind::FloorRecords,
    Kind::MmapTrace,
    Kind::Bpftrace,
    Kind::Strace,
    Kind::MmapTraceStacks,
    Kind::BpftraceUstack,
    Kind::MmapTraceAgent,
];

/// Part 1 and the start-up/RSS figures of part 3: every variant once per round, the
/// order rotating from round to round.
pub fn overhead(tools: &Tools, rounds: usize, iterations: u64) -> Result<Overhead> {
    let mut variants: Vec<Variant> = KINDS
        .iter()
        .map(|k| {
            let version = match k {
                Kind::Untraced | Kind::Floor | Kind::FloorRecords => String::new(),
                Kind::MmapTrace | Kind::MmapTraceStacks | Kind::MmapTraceAgent => {
                    super::version(&tools.cli)
                }
                Kind::Bpftrace | Kind::BpftraceUstack => super::version(&tools.bpftrace),
                Kind::Strace => super::version(&tools.strace),
            };
            Variant {
                name: k.name(),
                version,
                ..Variant::default()
            }
        })
        .collect();
    let script = tools.scratch.join("loop.bt");
    std::fs::write(&script, BPFTRACE_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    let ustack_script = tools.scratch.join("loop-ustack.bt");
    std::fs::write(&ustack_script, BPFTRACE_USTACK_SCRIPT)
        .with_context(|| format!("writing {}", ustack_script.display()))?;
    for round in 0..rounds {
        for i in 0..KINDS.len() {
            let index = (i + round) % KINDS.len();
            let v = &mut variants[index];
            let script = match KINDS[index] {
                Kind::BpftraceUstack => &ustack_script,
                _ => &script,
            };
            one_run(tools, KINDS[index], script, iterations, v)?;
            let last = |x: &Vec<f64>| x.last().copied().unwrap_or(f64::NAN);
            eprintln!(
                "bench: round {}: {:<10} {:.3} s, kept {}, lost {}, ready {}",
                round + 1,
                v.name,
                last(&v.secs),
                v.kept.last().map_or("-".into(), |k| k.to_string()),
                v.lost
                    .last()
                    .copied()
                    .flatten()
                    .map_or("-".into(), |l| l.to_string()),
                v.ready_ms
                    .last()
                    .map_or("-".into(), |ms| format!("{ms:.0} ms")),
            );
        }
    }
    Ok(Overhead {
        expected: 2 * iterations,
        variants,
    })
}

/// One loop each under the floor, the least records and mmap-trace with the kernel's
/// accounting on (accounting.rs): where a traced call's eBPF time goes.
pub fn accounting(tools: &Tools, iterations: u64) -> Result<Vec<super::accounting::Accounting>> {
    use super::accounting::{Accounting, Sampler, StatsOn};
    let _stats = StatsOn::enable()?;
    let out = tools.scratch.join("accounting.out");
    let mut rows = Vec::new();
    for kind in [Kind::Floor, Kind::FloorRecords, Kind::MmapTrace] {
        let variant = kind.name();
        settle();
        let mut held = [HeldLoop::start(&tools.workload, iterations)?];
        let tracer = own_tracer(tools, kind, held[0].pid(), &out)?;
        let pid = tracer
            .pid()
            .with_context(|| format!("{variant}: no tracer pid under GNU time"))?;
        let sampler = Sampler::start(pid);
        release(&mut held)?;
        tracer.finish(Stop::Exits)?;
        let progs = sampler.finish();
        eprintln!("bench: accounting: {variant}: {progs:?}");
        rows.push(Accounting::new(variant, progs)?);
    }
    Ok(rows)
}

/// Writes back what earlier runs left dirty (tracers write tens of MB each), so the
/// kernel's flusher does not run during, and bill its work to, the next timed loop.
fn settle() {
    // Best effort: a failed sync only makes the figures noisier.
    let _ = Command::new("sync").status();
}

/// mmap-trace's own variants on the loop `pid`: the floor's binary, or `trace`
/// writing to `out`.
fn own_tracer(tools: &Tools, kind: Kind, pid: u32, out: &Path) -> Result<Tracer> {
    let pid = [OsString::from("--pid"), pid.to_string().into()];
    match kind {
        Kind::Floor | Kind::FloorRecords => {
            let mut args = pid.to_vec();
            if let Kind::FloorRecords = kind {
                args.push("--records".into());
            }
            Tracer::floor(tools, kind.name(), args)
        }
        Kind::MmapTrace | Kind::MmapTraceStacks => {
            let mut args: Vec<OsString> = vec!["trace".into(), "--json".into()];
            if let Kind::MmapTraceStacks = kind {
                args.push("--stacks".into());
            }
            args.extend(["--output".into(), out.into()]);
            args.extend(pid);
            Tracer::cli(tools, kind.name(), args)
        }
        Kind::MmapTraceAgent => {
            // The loop is `sh` until released: the agent counts it from its exec on.
            let args = [
                "agent",
                "--metrics-addr",
                "127.0.0.1:0",
                "--comm",
                "mmap-workload",
            ]
            .map(OsString::from)
            .to_vec();
            Tracer::cli(tools, kind.name(), args)
        }
        Kind::Untraced | Kind::Bpftrace | Kind::Strace | Kind::BpftraceUstack => {
            bail!("{} is not one of mmap-trace's own variants", kind.name())
        }
    }
}

fn one_run(
    tools: &Tools,
    kind: Kind,
    script: &Path,
    iterations: u64,
    v: &mut Variant,
) -> Result<()> {
    let out = tools
        .scratch
        .join(format!("{}.out", v.name.replace([' ', '-'], "_")));
    let _ = std::fs::remove_file(&out);
    settle();
    let mut held = [HeldLoop::start(&tools.workload, iterations)?];
    let pid = held[0].pid();
    let os = |s: &str| OsString::from(s);
    let (tracer, stop) = match kind {
        Kind::Untraced => (None, Stop::Exits),
        Kind::Floor | Kind::FloorRecords | Kind::MmapTrace | Kind::MmapTraceStacks => {
            (Some(own_tracer(tools, kind, pid, &out)?), Stop::Exits)
        }
        // It runs until stopped; SIGINT drains the ring first.
        Kind::MmapTraceAgent => (Some(own_tracer(tools, kind, pid, &out)?), Stop::Interrupt),
        Kind::Bpftrace | Kind::BpftraceUstack => {
            let args = vec![
                os("-o"),
                out.clone().into(),
                script.into(),
                os(&pid.to_string()),
            ];
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let ready = ReadyOn::PerfEvents(cpus + 4);
            let t = Tracer::start(tools, v.name, &tools.bpftrace, args, ready)?;
            (Some(t), Stop::InterruptWhenQuiet(out.clone()))
        }
        Kind::Strace => {
            let args = vec![
                os("-f"),
                os("-e"),
                os("trace=mmap,munmap"),
                os("-o"),
                out.clone().into(),
                os("-p"),
                os(&pid.to_string()),
            ];
            let t = Tracer::start(
                tools,
                v.name,
                &tools.strace,
                args,
                ReadyOn::Stderr("attached"),
            )?;
            (Some(t), Stop::Exits)
        }
    };
    let secs = release(&mut held)?;
    v.secs.push(secs);
    let Some(tracer) = tracer else {
        return Ok(());
    };
    let done = tracer.finish(stop)?;
    match kind {
        Kind::Floor => return Ok(()), // it keeps nothing; its start-up and memory are not mmap-trace's
        Kind::FloorRecords => {
            let (kept, lost) = floor_records(&done.stderr)?;
            v.kept.push(kept);
            v.lost.push(Some(lost));
            return Ok(());
        }
        _ => {}
    }
    v.rss_kib.extend(done.rss_kib);
    v.ready_ms.push(done.ready.as_secs_f64() * 1e3);
    let (kept, lost) = match kind {
        Kind::MmapTrace | Kind::MmapTraceStacks => {
            let c = count_mmap_trace(&out, &[pid])?;
            (c.kept, Some(c.lost_loop))
        }
        Kind::Bpftrace | Kind::BpftraceUstack => count_bpftrace(&out, pid)?,
        Kind::MmapTraceAgent => agent_counts(&done.stderr)?,
        _ => (count_strace(&out)?, None),
    };
    v.kept.push(kept);
    v.lost.push(lost);
    Ok(())
}

/// `mmap-trace-floor --records`' last words: `floor: N records, M lost` (records of the
/// loop's pid: the loop's calls and its start-up's).
fn floor_records(stderr: &[String]) -> Result<(u64, u64)> {
    let line = stderr
        .iter()
        .find_map(|l| l.strip_prefix("mmap-trace-floor: floor: "))
        .with_context(|| format!("floor --records printed no count:\n{}", stderr.join("\n")))?;
    let number = |word: &str| -> Result<u64> {
        line.split(", ")
            .find_map(|part| part.strip_suffix(word))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no \"{word}\" count in {line:?}"))
    };
    Ok((number(" records")?, number(" lost")?))
}

/// `mmap-trace agent`'s last line: `agent stopped (SIGINT): N events, M lost, …` (every
/// event of the loop's process: its calls, its start-up's, exec and exit).
fn agent_counts(stderr: &[String]) -> Result<(u64, Option<u64>)> {
    let line = stderr
        .iter()
        .find_map(|l| l.split_once("agent stopped (").map(|(_, rest)| rest))
        .with_context(|| format!("the agent printed no final line:\n{}", stderr.join("\n")))?;
    let number = |word: &str| -> Result<u64> {
        line.split([':', ','])
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no \"{word}\" count in {line:?}"))
    };
    Ok((number(" events")?, Some(number(" lost")?)))
}

/// What mmap-trace's JSON output holds for some pids.
pub struct MmapTraceCount {
    /// The loop calls (mmap/munmap of 16 KiB) of those pids.
    pub kept: u64,
    /// Its summary's lost counts for the mmap and munmap probes.
    pub lost_loop: u64,
    /// Its summary's `lost` object, as written.
    pub lost_json: String,
}

fn count_mmap_trace(file: &Path, pids: &[u32]) -> Result<MmapTraceCount> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let pid_fields: Vec<String> = pids.iter().map(|p| format!("\"pid\":{p},")).collect();
    let mut kept = 0;
    let mut summary = None;
    for line in text.lines() {
        if line.starts_with("{\"type\":\"summary\"") {
            summary = Some(serde_json::from_str::<serde_json::Value>(line)?);
        } else if line.contains(LOOP_LEN_JSON)
            && (line.contains("\"probe\":\"mmap\",") || line.contains("\"probe\":\"munmap\","))
            && pid_fields.iter().any(|p| line.contains(p.as_str()))
        {
            kept += 1;
        }
    }
    let summary = summary.with_context(|| format!("{}: no summary record", file.display()))?;
    let lost = &summary["lost"];
    let lost_loop = lost["mmap"].as_u64().unwrap_or(0) + lost["munmap"].as_u64().unwrap_or(0);
    Ok(MmapTraceCount {
        kept,
        lost_loop,
        lost_json: lost.to_string(),
    })
}

/// (loop calls whose entry record was kept, losses bpftrace reported as `Lost N events`).
fn count_bpftrace(file: &Path, pid: u32) -> Result<(u64, Option<u64>)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let prefix = format!("{pid} ");
    let len = format!(" len={LOOP_LEN}");
    let mut kept = 0;
    let mut lost = 0;
    for line in text.lines() {
        if let Some(n) = line
            .strip_prefix("Lost ")
            .and_then(|r| r.split_whitespace().next())
        {
            lost += n.parse::<u64>().unwrap_or(0);
        } else if line.starts_with(&prefix)
            && (line.contains(" enter mmap ") || line.contains(" enter munmap "))
            && (line.contains(&format!("{len} ")) || line.ends_with(&len))
        {
            kept += 1;
        }
    }
    Ok((kept, Some(lost)))
}

/// Loop calls in strace's output (`mmap(NULL, 16384, …` and `munmap(0x…, 16384)`).
fn count_strace(file: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mmap = format!("mmap(NULL, {LOOP_LEN},");
    let munmap = format!(", {LOOP_LEN})");
    Ok(text
        .lines()
        .filter(|l| l.contains(&mmap) || (l.contains("munmap(") && l.contains(&munmap)))
        .count() as u64)
}

/// Part 2: k loops at once, untraced and under `mmap-trace --comm`.
pub struct ThroughputRow {
    pub loops: u32,
    /// Calls all loops make together.
    pub calls: u64,
    /// Calls per second, untraced and traced.
    pub untraced_rate: Vec<f64>,
    pub traced_rate: Vec<f64>,
    pub kept: Vec<u64>,
    pub lost: Vec<u64>,
}

pub fn throughput(
    tools: &Tools,
    rounds: usize,
    iterations: u64,
    parallel: &[u32],
) -> Result<Vec<ThroughputRow>> {
    let mut rows: Vec<ThroughputRow> = parallel
        .iter()
        .map(|&k| ThroughputRow {
            loops: k,
            calls: 2 * iterations * u64::from(k),
            untraced_rate: Vec::new(),
            traced_rate: Vec::new(),
            kept: Vec::new(),
            lost: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        for row in rows.iter_mut() {
            let mut held = start_loops(tools, iterations, row.loops)?;
            row.untraced_rate
                .push(row.calls as f64 / release(&mut held)?);
            let run = traced_loops(tools, iterations, row.loops, None)?;
            row.traced_rate.push(row.calls as f64 / run.secs);
            row.kept.push(run.count.kept);
            row.lost.push(run.count.lost_loop);
            eprintln!(
                "bench: round {}: {} loops: untraced {:.0} calls/s, traced {:.0} calls/s, kept {}/{}, lost {}",
                round + 1,
                row.loops,
                row.untraced_rate.last().unwrap_or(&0.0),
                row.traced_rate.last().unwrap_or(&0.0),
                run.count.kept,
                row.calls,
                run.count.lost_loop
            );
        }
    }
    Ok(rows)
}

/// What mmap-trace says when its ring buffer is too small for the load.
pub struct SmallRing {
    pub kib: u32,
    pub loops: u32,
    pub calls: u64,
    pub kept: u64,
    pub lost: u64,
    pub lost_json: String,
    /// Its stderr warnings.
    pub warnings: Vec<String>,
}

pub fn small_ring(tools: &Tools, iterations: u64, loops: u32, kib: u32) -> Result<SmallRing> {
    let run = traced_loops(tools, iterations, loops, Some(kib))?;
    let small = SmallRing {
        kib,
        loops,
        calls: 2 * iterations * u64::from(loops),
        kept: run.count.kept,
        lost: run.count.lost_loop,
        lost_json: run.count.lost_json,
        warnings: run
            .stderr
            .into_iter()
            .filter(|l| l.contains("WARNING"))
            .collect(),
    };
    eprintln!(
        "bench: {kib} KiB ring buffer, {loops} loops: kept {}/{}, lost {}; {:?}",
        small.kept, small.calls, small.lost, small.warnings
    );
    Ok(small)
}

fn start_loops(tools: &Tools, iterations: u64, k: u32) -> Result<Vec<HeldLoop>> {
    settle();
    (0..k)
        .map(|_| HeldLoop::start(&tools.workload, iterations))
        .collect()
}

struct TracedLoops {
    secs: f64,
    count: MmapTraceCount,
    stderr: Vec<String>,
}

/// k loops under one `mmap-trace trace --comm mmap-workload`, stopped with SIGINT after.
fn traced_loops(
    tools: &Tools,
    iterations: u64,
    k: u32,
    ring_kib: Option<u32>,
) -> Result<TracedLoops> {
    let mut held = start_loops(tools, iterations, k)?;
    let pids: Vec<u32> = held.iter().map(HeldLoop::pid).collect();
    let out = tools.scratch.join("throughput.out");
    let mut args: Vec<OsString> = ["trace", "--json", "--comm", "mmap-workload", "--output"]
        .map(OsString::from)
        .into();
    args.push(out.clone().into());
    if let Some(kib) = ring_kib {
        args.push("--ring-buffer-kib".into());
        args.push(kib.to_string().into());
    }
    let tracer = Tracer::cli(tools, "mmap-trace", args)?;
    let secs = release(&mut held)?;
    let done = tracer.finish(Stop::Interrupt)?;
    Ok(TracedLoops {
        secs,
        count: count_mmap_trace(&out, &pids)?,
        stderr: done.stderr,
    })
}

/// Part 4 (issue 17): `mmap-workload --touch-mib MIB` (one write to each fresh page of a MIB
/// mapping: MIB × 256 faults) untraced, under `mmap-trace trace --faults` and under
/// `perf trace --pf=all` (where perf runs here), alternating round by round.
pub struct FaultBench {
    pub mib: u64,
    /// The loop's own faults (a page each).
    pub expected: u64,
    /// untraced, mmap-trace --faults, perf trace (when it runs).
    pub variants: Vec<Variant>,
    /// Why perf trace is not in the table.
    pub perf_missing: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum FaultKind {
    Untraced,
    MmapTrace,
    Perf,
}

pub fn faults(tools: &Tools, rounds: usize, mib: u64) -> Result<FaultBench> {
    let perf_missing = match &tools.perf {
        Ok(_) => None,
        Err(why) => Some(why.clone()),
    };
    let mut kinds = vec![FaultKind::Untraced, FaultKind::MmapTrace];
    if perf_missing.is_none() {
        kinds.push(FaultKind::Perf);
    }
    let mut variants: Vec<Variant> = kinds
        .iter()
        .map(|k| {
            let (name, version) = match (k, &tools.perf) {
                (FaultKind::Untraced, _) => ("untraced", String::new()),
                (FaultKind::MmapTrace, _) => ("mmap-trace --faults", super::version(&tools.cli)),
                (FaultKind::Perf, Ok(perf)) => ("perf trace --pf=all", super::version(perf)),
                (FaultKind::Perf, Err(_)) => ("perf trace --pf=all", String::new()),
            };
            Variant {
                name,
                version,
                ..Variant::default()
            }
        })
        .collect();
    for round in 0..rounds {
        for i in 0..kinds.len() {
            let index = (i + round) % kinds.len();
            let v = &mut variants[index];
            fault_run(tools, kinds[index], mib, v)?;
            eprintln!(
                "bench: faults round {}: {:<20} {:.3} s, kept {}, lost {}",
                round + 1,
                v.name,
                v.secs.last().copied().unwrap_or(f64::NAN),
                v.kept.last().map_or("-".into(), |k| k.to_string()),
                v.lost
                    .last()
                    .copied()
                    .flatten()
                    .map_or("-".into(), |l| l.to_string()),
            );
        }
    }
    Ok(FaultBench {
        mib,
        expected: mib * 256,
        variants,
        perf_missing,
    })
}

fn fault_run(tools: &Tools, kind: FaultKind, mib: u64, v: &mut Variant) -> Result<()> {
    let out = tools.scratch.join("faults.out");
    let _ = std::fs::remove_file(&out);
    settle();
    let mut held = [HeldLoop::with_args(
        &tools.workload,
        &["--touch-mib".into(), mib.to_string()],
    )?];
    let pid = held[0].pid().to_string();
    let os = |s: &str| OsString::from(s);
    let (tracer, stop) = match (kind, &tools.perf) {
        (FaultKind::Untraced, _) => (None, Stop::Exits),
        (FaultKind::MmapTrace, _) => {
            let args = vec![
                os("trace"),
                os("--faults"),
                os("--json"),
                os("--output"),
                out.clone().into(),
                os("--pid"),
                os(&pid),
            ];
            (Some(Tracer::cli(tools, v.name, args)?), Stop::Exits)
        }
        (FaultKind::Perf, Ok(perf)) => {
            let args = vec![
                os("trace"),
                os("--pf=all"),
                os("--no-syscalls"),
                os("-o"),
                out.clone().into(),
                os("-p"),
                os(&pid),
            ];
            // Attached once it holds its two page-fault events (major, minor).
            let t = Tracer::start(tools, v.name, perf, args, ReadyOn::PerfEvents(2))?;
            (Some(t), Stop::InterruptWhenQuiet(out.clone()))
        }
        (FaultKind::Perf, Err(why)) => bail!("perf trace does not run here: {why}"),
    };
    v.secs.push(release(&mut held)?);
    let Some(tracer) = tracer else {
        return Ok(());
    };
    let done = tracer.finish(stop)?;
    v.rss_kib.extend(done.rss_kib);
    v.ready_ms.push(done.ready.as_secs_f64() * 1e3);
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let (kept, lost) = if kind == FaultKind::MmapTrace {
        let pid_field = format!("\"pid\":{pid},");
        let kept = text
            .lines()
            .filter(|l| l.contains("\"probe\":\"fault\"") && l.contains(&pid_field))
            .count() as u64;
        let summary = text
            .lines()
            .rfind(|l| l.starts_with("{\"type\":\"summary\""))
            .with_context(|| format!("{}: no summary record", out.display()))?;
        let summary: serde_json::Value = serde_json::from_str(summary)?;
        (kept, summary["lost"]["fault"].as_u64())
    } else {
        // `0.047 ( 0.000 ms): minfault [elf_load+0x28a] => 0x7f… (?k)`: with -p, perf
        // names no task (every line is the pid's).
        let kept = text.lines().filter(|l| l.contains("fault [")).count() as u64;
        (kept, None)
    };
    v.kept.push(kept);
    v.lost.push(lost);
    Ok(())
}
