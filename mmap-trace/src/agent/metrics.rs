//! The agent's Prometheus metrics (prometheus-client, the OpenMetrics text format),
//! published from [`Agent`]'s counts at each publish tick: counters by their growth
//! since the last one, gauges set to the live totals.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use mmap_trace_common::{PROBE_COUNT, Probe, RssMember};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::state::{Agent, KINDS, What, Who};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhoLabels {
    pub comm: String,
    pub cgroup: String,
    pub container_id: String,
    pub pod_uid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyscallLabels {
    pub syscall: String,
    pub comm: String,
    pub cgroup: String,
    pub container_id: String,
    pub pod_uid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
    pub comm: String,
    pub cgroup: String,
    pub container_id: String,
    pub pod_uid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
    pub comm: String,
    pub cgroup: String,
    pub container_id: String,
    pub pod_uid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotableLabels {
    pub kind: String,
}

pub struct Metrics {
    pub registry: Arc<Registry>,
    syscalls: Family<SyscallLabels, Counter>,
    lost: Family<ProbeLabels, Counter>,
    malformed: Counter,
    mapped: Family<KindLabels, Gauge>,
    wx: Family<WhoLabels, Counter>,
    faults: Option<(Family<WhoLabels, Counter>, Family<TypeLabels, Gauge>)>,
    pub export_failures: Family<SignalLabels, Counter>,
    pub notable: Family<NotableLabels, Counter>,
    processes: Gauge,
    pub ready: Gauge,
    /// What was published: lost per probe, and the gauge series set last time.
    lost_seen: [u64; PROBE_COUNT],
    malformed_seen: u64,
    mapped_series: HashSet<KindLabels>,
    resident_series: HashSet<TypeLabels>,
}

impl Metrics {
    pub fn new(faults: bool) -> Self {
        let mut registry = Registry::default();
        let syscalls = Family::<SyscallLabels, Counter>::default();
        registry.register(
            "mmap_trace_syscalls",
            "Completed calls that change an address space, by syscall (mmap, munmap, \
             mprotect, mremap, brk; the catch-all's other syscalls by name, fault, other_task)",
            syscalls.clone(),
        );
        let lost = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "mmap_trace_events_lost",
            "Events the probes could not hand over (ring buffer full), by probe",
            lost.clone(),
        );
        let malformed = Counter::default();
        registry.register(
            "mmap_trace_malformed_records",
            "Ring buffer records that did not decode (never expected)",
            malformed.clone(),
        );
        let mapped = Family::<KindLabels, Gauge>::default();
        registry.register(
            "mmap_trace_mapped_bytes",
            "Live mapped bytes of the traced processes, by kind (anon, file, shared, device, \
             stack, heap), from the address-space model",
            mapped.clone(),
        );
        let wx = Family::<WhoLabels, Counter>::default();
        registry.register(
            "mmap_trace_writable_executable_mappings",
            "Successful mmap and mprotect calls that made memory writable and executable",
            wx.clone(),
        );
        let faults = faults.then(|| {
            let count = Family::<WhoLabels, Counter>::default();
            registry.register(
                "mmap_trace_page_faults",
                "Page faults of the traced processes on user addresses",
                count.clone(),
            );
            let resident = Family::<TypeLabels, Gauge>::default();
            registry.register(
                "mmap_trace_resident_bytes",
                "Resident memory of the traced processes, by type (anon, file, shmem, swap), \
                 in the kernel's 256 KiB steps",
                resident.clone(),
            );
            (count, resident)
        });
        let export_failures = Family::<SignalLabels, Counter>::default();
        registry.register(
            "mmap_trace_otlp_export_failures",
            "OTLP exports that failed after their retries, by signal (metrics, logs)",
            export_failures.clone(),
        );
        let notable = Family::<NotableLabels, Counter>::default();
        registry.register(
            "mmap_trace_notable_events",
            "Events reported as OTLP logs (writable_executable_mapping, device_mapping, \
             large_mapping, events_lost)",
            notable.clone(),
        );
        let processes = Gauge::default();
        registry.register(
            "mmap_trace_processes",
            "Processes whose address space the agent models now",
            processes.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "mmap_trace_agent_ready",
            "1 while the probes are attached and counting; 0 while starting or stopping",
            ready.clone(),
        );
        Self {
            registry: Arc::new(registry),
            syscalls,
            lost,
            malformed,
            mapped,
            wx,
            faults,
            export_failures,
            notable,
            processes,
            ready,
            lost_seen: [0; PROBE_COUNT],
            malformed_seen: 0,
            mapped_series: HashSet::new(),
            resident_series: HashSet::new(),
        }
    }

    /// Moves what `agent` counted since the last publish into the registry, and sets the
    /// gauges. Returns the probes whose lost count grew, with the growth.
    pub fn publish(
        &mut self,
        agent: &mut Agent,
        lost: &[u64; PROBE_COUNT],
        malformed: u64,
    ) -> Vec<(Probe, u64)> {
        for ((what, who), n) in std::mem::take(&mut agent.syscalls) {
            let w = who_labels(agent, who);
            self.syscalls
                .get_or_create(&SyscallLabels {
                    syscall: What::label(what),
                    comm: w.comm,
                    cgroup: w.cgroup,
                    container_id: w.container_id,
                    pod_uid: w.pod_uid,
                })
                .inc_by(n);
        }
        for (who, n) in std::mem::take(&mut agent.wx) {
            self.wx.get_or_create(&who_labels(agent, who)).inc_by(n);
        }
        let faults = std::mem::take(&mut agent.faults);
        if let Some((count, _)) = &self.faults {
            for (who, n) in faults {
                count.get_or_create(&who_labels(agent, who)).inc_by(n);
            }
        }
        let mut grown = Vec::new();
        for (i, (&now, seen)) in lost.iter().zip(self.lost_seen.iter_mut()).enumerate() {
            let Some(probe) = Probe::from_u32(i as u32) else {
                continue;
            };
            if now > *seen {
                self.lost
                    .get_or_create(&ProbeLabels {
                        probe: probe.name().to_owned(),
                    })
                    .inc_by(now - *seen);
                grown.push((probe, now - *seen));
                *seen = now;
            }
        }
        if malformed > self.malformed_seen {
            self.malformed.inc_by(malformed - self.malformed_seen);
            self.malformed_seen = malformed;
        }
        let totals = agent.totals();
        let mut mapped_now = HashSet::new();
        for (who, sums) in &totals.mapped {
            let w = who_labels(agent, *who);
            for (kind, bytes) in KINDS.iter().zip(sums) {
                let labels = KindLabels {
                    kind: (*kind).to_owned(),
                    comm: w.comm.clone(),
                    cgroup: w.cgroup.clone(),
                    container_id: w.container_id.clone(),
                    pod_uid: w.pod_uid.clone(),
                };
                self.mapped.get_or_create(&labels).set(*bytes as i64);
                mapped_now.insert(labels);
            }
        }
        // A series whose processes all exited holds nothing now.
        for gone in self.mapped_series.difference(&mapped_now) {
            self.mapped.get_or_create(gone).set(0);
        }
        self.mapped_series = mapped_now;
        if let Some((_, resident)) = &self.faults {
            let mut now = HashSet::new();
            for (who, sums) in &totals.resident {
                let w = who_labels(agent, *who);
                for (member, bytes) in RssMember::ALL.iter().zip(sums) {
                    let labels = TypeLabels {
                        r#type: member.name().to_owned(),
                        comm: w.comm.clone(),
                        cgroup: w.cgroup.clone(),
                        container_id: w.container_id.clone(),
                        pod_uid: w.pod_uid.clone(),
                    };
                    resident.get_or_create(&labels).set(*bytes);
                    now.insert(labels);
                }
            }
            for gone in self.resident_series.difference(&now) {
                resident.get_or_create(gone).set(0);
            }
            self.resident_series = now;
        }
        self.processes.set(agent.processes.count() as i64);
        grown
    }

    /// The metrics' current values, for the OTLP exporter: (name, labels, value, is a
    /// counter), read from the registry's own text so both exports say the same.
    pub fn text(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn who_labels(agent: &Agent, (comm, cgroup): Who) -> WhoLabels {
    let id = agent.identity(cgroup);
    WhoLabels {
        comm: agent.comm_label(comm).to_owned(),
        cgroup: agent.cgroup_label(cgroup).to_owned(),
        container_id: id.container_id.clone(),
        pod_uid: id.pod_uid.clone(),
    }
}

/// Samples of the OpenMetrics text, for exporters that want values rather than text:
/// (metric family, sample name, labels, value).
pub fn samples(text: &str) -> Vec<Sample> {
    let mut types: HashMap<&str, &str> = HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name, kind);
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        let family = name.strip_suffix("_total").unwrap_or(name);
        let counter = types.get(family) == Some(&"counter");
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
            counter,
        });
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub counter: bool,
}

/// `a="x",b="y\"z"` as pairs (the encoder escapes `\`, `"` and newlines).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_follows_the_naming_conventions_and_reads_back() {
        let m = Metrics::new(true);
        m.syscalls
            .get_or_create(&SyscallLabels {
                syscall: "mmap".into(),
                comm: "a \"quoted\" name".into(),
                cgroup: "/".into(),
                container_id: String::new(),
                pod_uid: String::new(),
            })
            .inc_by(3);
        let text = m.text();
        assert!(
            text.contains("# TYPE mmap_trace_syscalls counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mmap_trace_agent_ready gauge"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        let samples = samples(&text);
        let s = samples
            .iter()
            .find(|s| s.name == "mmap_trace_syscalls_total")
            .unwrap();
        assert!(s.counter);
        assert_eq!(s.value, 3.0);
        assert!(
            s.labels
                .contains(&("comm".to_owned(), "a \"quoted\" name".to_owned()))
        );
    }
}
