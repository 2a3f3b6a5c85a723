//! `mmap-trace agent`: runs on every node until stopped, counts what `trace` would print
//! and keeps each live process's address space in the one model (`crate::space`), and
//! exposes the result as Prometheus metrics (`--metrics-addr`) and OTLP metrics and logs
//! (`--otlp-endpoint`).
//!
//! Owns the agent's state (`state`), its metrics (`metrics`), their HTTP exposition
//! (`http`) and the OTLP export (`otlp`). May not touch: the probes or their records
//! beyond reading decoded events, the model's rules (it feeds `space` calls and reads
//! its regions), or trace's and verify's output.

mod http;
mod metrics;
mod otlp;
mod state;

use std::time::Duration;

use anyhow::Result;

use crate::{
    kernel::{decode, loader::LoadOptions, reader::RingReader},
    process::session::{Session, StopSignals, Target, runtime},
};

pub use otlp::OtlpConfig;
pub use state::Limits;

pub struct AgentConfig {
    /// Every process, or those named `--comm` (narrowed by `load.cgroup`).
    pub target: Target,
    pub load: LoadOptions,
    pub metrics_addr: Option<String>,
    pub otlp: Option<OtlpConfig>,
    pub limits: Limits,
    /// `--faults`: page faults and resident memory too.
    pub faults: bool,
    /// How often counts move into the exposition (and exited processes are let go).
    pub publish_interval: Duration,
}

pub fn run(config: AgentConfig) -> Result<()> {
    let runtime = runtime()?;
    let signals = StopSignals::install(&runtime)?;
    let mut metrics = metrics::Metrics::new(config.faults);
    // Bound before anything loads: an address in use is one line, and a scrape from
    // now on gets a well-formed answer (agent_ready 0 until the probes are attached).
    if let Some(addr) = &config.metrics_addr {
        let listener = http::bind(addr)?;
        let local = listener.local_addr()?;
        http::serve(listener, metrics.registry.clone());
        eprintln!("mmap-trace: agent: metrics at http://{local}/metrics");
    }
    // The exporter's threads start outside the event loop (its HTTP client blocks).
    let identity = config
        .load
        .cgroup
        .id
        .ne(&0)
        .then(|| {
            crate::process::cgroup::Names::new()
                .name(config.load.cgroup.id)
                .map(str::to_owned)
        })
        .flatten();
    let exporter = match config.otlp {
        Some(otlp) => Some(otlp::Exporter::start(otlp, identity.as_deref(), &metrics)?),
        None => None,
    };
    let session = Session::start("agent", &config.target, config.load, None)?;
    metrics.ready.set(1);
    let Session { tracer, ring, .. } = session;
    let mut agent = state::Agent::new(config.limits);
    let mut malformed = 0u64;
    let mut events = 0u64;
    let result = runtime.block_on(async {
        let mut reader = RingReader::new(ring)?;
        let StopSignals {
            mut sigint,
            mut sigterm,
        } = signals;
        let mut publish = tokio::time::interval(config.publish_interval);
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                wake = reader.wait() => {
                    wake?;
                    drain(reader.ring(), &mut agent, &mut malformed, &mut events)?;
                }
                _ = publish.tick() => {
                    release_exited(&mut agent);
                    let grown = metrics.publish(&mut agent, &tracer.lost()?, malformed);
                    if let Some(exporter) = &exporter {
                        exporter.publish(&metrics, std::mem::take(&mut agent.notable), &grown);
                    }
                    agent.notable.clear();
                }
                _ = sigint.recv() => break "SIGINT",
                _ = sigterm.recv() => break "SIGTERM",
            }
        };
        // What the kernel submitted before we stopped is still in the buffer.
        drain(reader.ring(), &mut agent, &mut malformed, &mut events)?;
        anyhow::Ok(ended)
    });
    metrics.ready.set(0);
    let ended = result?;
    tracer.flush_logs();
    let lost = tracer.lost()?;
    let grown = metrics.publish(&mut agent, &lost, malformed);
    let lost_total: u64 = lost.iter().sum();
    if let Some(exporter) = exporter {
        exporter.publish(&metrics, std::mem::take(&mut agent.notable), &grown);
        exporter.shutdown(&metrics);
    }
    eprintln!(
        "mmap-trace: agent stopped ({ended}): {events} events, {lost_total} lost, {malformed} malformed"
    );
    Ok(())
}

fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    agent: &mut state::Agent,
    malformed: &mut u64,
    events: &mut u64,
) -> Result<()> {
    decode::drain(ring, malformed, |event| {
        *events += 1;
        agent.note(&event);
        Ok(())
    })
}

/// Lets go of the processes that no longer exist although their exit record never came
/// (lost with a full ring): a backstop to the exit records, so state stays bounded.
fn release_exited(agent: &mut state::Agent) {
    let gone: Vec<u32> = agent
        .pids()
        .into_iter()
        .filter(|&pid| {
            // SAFETY: kill(2) with signal 0 only checks that the process exists.
            let rc = unsafe { libc::kill(pid as i32, 0) };
            rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        })
        .collect();
    for pid in gone {
        agent.exited(pid);
    }
}
