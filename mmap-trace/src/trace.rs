//! `mmap-trace trace`: attach, stream events until the target exits, the duration ends or
//! a signal arrives, then drain the ring buffer, write the summary and flush.

use std::{os::fd::OwnedFd, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    faults::Faults,
    kernel::decode,
    kernel::loader::{LoadOptions, Tracer},
    kernel::reader::{RingReader, Wake},
    output::{Format, Output, Summary, ignore_closed_output},
    process::session::{Session, StopSignals, Target, monotonic_ns, reap, runtime},
    schema::{FaultedMapping, FaultsSummary, Hex, LeftOut, ResidentMemory, text_and_hex},
};

pub struct TraceConfig {
    pub target: Target,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub duration: Option<Duration>,
    /// `-T`: table times as the wall-clock time of day.
    pub wall_clock: bool,
    pub load: LoadOptions,
}

/// The processes `--follow-forks` added (from the fork probe's records): the trace goes
/// on until the last of them has exited too.
#[derive(Default)]
struct Followed {
    pids: Vec<u32>,
}

impl Followed {
    fn note(&mut self, event: &decode::Event) {
        if let decode::Event::Fork(f) = event {
            self.pids.push(f.child_pid);
        }
    }

    /// Drops the exited ones; true when none is left.
    fn all_exited(&mut self) -> bool {
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        self.pids
            .retain(|&pid| unsafe { libc::kill(pid as i32, 0) } == 0 && !is_zombie(pid));
        self.pids.is_empty()
    }
}

fn is_zombie(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map_or(true, |s| s.state == 'Z' || s.state == 'X')
}

pub fn run(config: TraceConfig) -> Result<()> {
    let runtime = runtime()?;
    let signals = StopSignals::install(&runtime)?;
    // Before attaching: a bad path must not leave a command running untraced.
    let sink = crate::output::open(config.output.as_deref())?;
    let follow_forks = config.load.filter.follow_forks;
    let stacks = config.load.stacks;
    let session = Session::start("trace", &config.target, config.load, None)?;
    let mut out = Output::new(config.format, sink, session.start_ns);
    let follow = follow_forks != 0;
    if config.wall_clock {
        out.wall_clock();
    }
    let mut writer = if stacks {
        Writer::Stacked(
            crate::stacks::Pipeline::start(out).context("starting the stack symbolizer")?,
        )
    } else {
        Writer::Direct(out)
    };
    let Session {
        tracer,
        ring,
        pidfd,
        child,
        start_ns,
        ..
    } = session;

    let (ended, drained) = runtime.block_on(event_loop(
        ring,
        signals,
        &mut writer,
        pidfd,
        child,
        config.duration,
        &tracer,
        follow,
    ))?;
    tracer.flush_logs();
    let duration_ns = monotonic_ns().saturating_sub(start_ns);
    let mut out = writer.finish().context("writing the stacked events")?;
    let summary = Summary {
        events: out.counts,
        lost: tracer.lost()?,
        malformed: drained.malformed,
        duration_ns,
        ended,
        attached: tracer.attached.clone(),
        verify: None,
        faults: drained.faults.as_ref().map(faults_summary),
    };
    out.summary(&summary)
        .and_then(|()| out.flush())
        .or_else(ignore_closed_output)?;
    let lost: u64 = summary.lost.iter().sum();
    if lost > 0 {
        eprintln!(
            "mmap-trace: WARNING: {lost} events were lost (ring buffer full); see the summary"
        );
    }
    Ok(())
}

/// What the reader counts as it drains: trace's own part of the summary.
#[derive(Default)]
struct Drained {
    /// Records the decoder refused (never expected; counted, not hidden).
    malformed: u64,
    /// `--faults`: the model that attributes each fault to its mapping, and the counts.
    faults: Option<Faults>,
}

/// `--faults`' part of the summary record, from what the faults counted.
fn faults_summary(faults: &Faults) -> FaultsSummary {
    FaultsSummary {
        faults_by_mapping: faults
            .by_faults()
            .into_iter()
            .map(|m| {
                let (name, name_hex) = text_and_hex(&m.name);
                FaultedMapping {
                    pid: m.pid,
                    start: Hex(m.start),
                    end: Hex(m.end),
                    perms: m.perms,
                    name: name.into_owned(),
                    name_hex,
                    faults: m.faults,
                    writes: m.writes,
                    present: m.present,
                    major: m.major,
                    first_ns: m.first_ns,
                }
            })
            .collect(),
        faults_unattributed: faults.unattributed,
        resident: faults
            .resident()
            .into_iter()
            .map(|(pid, member, r)| ResidentMemory {
                pid,
                member: mmap_trace_common::RssMember::from_u32(member)
                    .map_or("unknown", |m| m.name())
                    .to_owned(),
                first_bytes: r.first,
                last_bytes: r.last,
                peak_bytes: r.peak,
            })
            .collect(),
        left_out: match faults.dropped() {
            (0, _, 0) => None,
            (mappings, faults, resident) => Some(LeftOut {
                mappings,
                faults,
                resident,
            }),
        },
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the loop's inputs, each used once; a struct would only rename them"
)]
async fn event_loop(
    ring: RingBuf<MapData>,
    signals: StopSignals,
    out: &mut Writer,
    pidfd: Option<OwnedFd>,
    child: Option<u32>,
    duration: Option<Duration>,
    tracer: &Tracer,
    follow: bool,
) -> Result<(String, Drained)> {
    let mut followed = Followed::default();
    // With --follow-forks the target's exit is not the end while its children live.
    let mut root_ended: Option<String> = None;
    let mut reader = RingReader::new(ring)?;
    let exited = match pidfd {
        Some(fd) => Some(
            // SAFETY: the AsyncFd owns the descriptor, so it stays open while registered.
            unsafe { AsyncFd::register(fd) }
                .map_err(|e| e.into_parts().1)
                .context("polling the target")?,
        ),
        None => None,
    };
    let StopSignals {
        mut sigint,
        mut sigterm,
    } = signals;
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let target_exit = async {
        match &exited {
            Some(fd) => fd.readable().await.map(|_| ()),
            None => std::future::pending().await,
        }
    };
    tokio::pin!(target_exit);
    let mut lost_check = tokio::time::interval(Duration::from_secs(1));
    let mut lost_seen = 0u64;
    let mut drained = Drained {
        faults: tracer
            .attached
            .contains(&mmap_trace_common::Probe::Fault)
            .then(Faults::default),
        ..Drained::default()
    };

    let ended = loop {
        tokio::select! {
            wake = reader.wait() => {
                let wake = wake?;
                if drain(reader.ring(), out, &mut drained, &mut followed).is_err() {
                    break "output closed".to_string();
                }
                if wake == Wake::Tick
                    && let Some(ended) = &root_ended
                    && followed.all_exited()
                {
                    break format!("{ended}; its followed children exited too");
                }
            }
            _ = sigint.recv() => break "SIGINT".to_string(),
            _ = sigterm.recv() => break "SIGTERM".to_string(),
            () = &mut deadline => break "duration elapsed".to_string(),
            res = &mut target_exit, if root_ended.is_none() => {
                res?;
                let ended = match child {
                    Some(pid) => format!("command exited ({})", reap(pid)),
                    None => {
                        // A --pid target: ours to say, since no exit status reaches us.
                        eprintln!("mmap-trace: note: the traced process exited; trace ended");
                        "target process exited".to_string()
                    }
                };
                if !follow {
                    break ended;
                }
                root_ended = Some(ended);
            }
            _ = lost_check.tick() => {
                let lost: u64 = tracer.lost()?.iter().sum();
                if lost > lost_seen {
                    eprintln!("mmap-trace: WARNING: {} events lost so far", lost);
                    lost_seen = lost;
                }
            }
        }
    };
    // Whatever the kernel submitted before we stopped is still in the buffer.
    let _ = drain(reader.ring(), out, &mut drained, &mut followed);
    Ok((ended, drained))
}

/// Where the reader's records go: straight to the output, or (`--stacks`) to the
/// worker that unwinds, names and writes them.
enum Writer {
    Direct(Output),
    Stacked(crate::stacks::Pipeline),
}

impl Writer {
    /// The output back, once everything sent is written.
    fn finish(self) -> std::io::Result<Output> {
        match self {
            Writer::Direct(out) => Ok(out),
            Writer::Stacked(pipeline) => pipeline.finish(),
        }
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    out: &mut Writer,
    drained: &mut Drained,
    followed: &mut Followed,
) -> Result<()> {
    crate::process::paths::new_batch();
    if let Some(faults) = &mut drained.faults {
        faults.new_batch();
    }
    let faults = &mut drained.faults;
    decode::drain_records(ring, &mut drained.malformed, |record| {
        // Borrowed, not copied again: an event is ~400 bytes (the reader's profile on an
        // mmap loop is mostly memcpy: this copy, decoding's and the JSON writer's).
        let event = match &record {
            decode::Record::Event(event, _) => Some(event),
            decode::Record::ExecImage(_) => None,
        };
        let path = event.and_then(|event| {
            followed.note(event);
            crate::process::paths::mapped_path(event)
        });
        // --faults: every event moves the model; a fault learns the mapping it hit.
        let fault_vma = match (faults.as_mut(), event) {
            (Some(faults), Some(event)) => faults.note(event, path.as_ref()),
            _ => None,
        };
        match out {
            Writer::Direct(out) => {
                let written = match event {
                    Some(event @ decode::Event::Fault(_)) if faults.is_some() => {
                        out.fault(event, fault_vma)
                    }
                    Some(event) => out.event(event, path),
                    None => Ok(()),
                };
                written.or_else(ignore_closed_output)?;
            }
            Writer::Stacked(pipeline) => pipeline.record(record, path, fault_vma),
        }
        Ok(())
    })?;
    match out {
        Writer::Direct(out) => out.flush().or_else(ignore_closed_output)?,
        Writer::Stacked(pipeline) => pipeline.end_of_drain(),
    }
    Ok(())
}
