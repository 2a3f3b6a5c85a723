//! `--otlp-endpoint`: the same metrics as the Prometheus exposition, and the events a
//! person would want to be told about as logs, sent over OTLP/HTTP (protobuf) by the
//! OpenTelemetry SDK's own threads: the ring reader only hands a snapshot and a bounded
//! batch of log records over, never waits on the network. A failed export is retried
//! with backoff by the exporter (opentelemetry-otlp's retry policy), then counted in
//! `mmap_trace_otlp_export_failures_total{signal}` and dropped; the SDK's log queue is
//! bounded (OTEL_BLRP_MAX_QUEUE_SIZE). The usual OTEL_* variables apply
//! (OTEL_EXPORTER_OTLP_ENDPOINT and its per-signal forms when no --otlp-endpoint is
//! given, OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION, OTEL_SERVICE_NAME,
//! OTEL_RESOURCE_ATTRIBUTES, OTEL_METRIC_EXPORT_INTERVAL, OTEL_BLRP_*).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Result, anyhow};
use mmap_trace_common::Probe;
use opentelemetry::{
    KeyValue,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity},
    metrics::MeterProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    logs::{LogBatch, LogExporter, SdkLoggerProvider},
    metrics::{
        PeriodicReader, SdkMeterProvider, Temporality, data::ResourceMetrics,
        exporter::PushMetricExporter,
    },
};
use prometheus_client::metrics::counter::Counter;

use super::metrics::{Metrics, Sample, SignalLabels, samples};
use super::state::{Notable, NotableKind};

pub struct OtlpConfig {
    /// The collector's base URL (`/v1/metrics` and `/v1/logs` are added, as for
    /// OTEL_EXPORTER_OTLP_ENDPOINT); None: from the OTEL_* variables.
    pub endpoint: Option<String>,
    /// How often metrics are sent, unless OTEL_METRIC_EXPORT_INTERVAL says.
    pub interval: Duration,
}

pub struct Exporter {
    meters: SdkMeterProvider,
    logs: SdkLoggerProvider,
    logger: opentelemetry_sdk::logs::SdkLogger,
    /// What the observable instruments report at the next collection.
    snapshot: Arc<Mutex<Vec<Sample>>>,
}

/// The metric families, as the Prometheus exposition names them: (name, counter).
const FAMILIES: &[(&str, bool)] = &[
    ("mmap_trace_syscalls", true),
    ("mmap_trace_events_lost", true),
    ("mmap_trace_malformed_records", true),
    ("mmap_trace_writable_executable_mappings", true),
    ("mmap_trace_page_faults", true),
    ("mmap_trace_notable_events", true),
    ("mmap_trace_otlp_export_failures", true),
    ("mmap_trace_mapped_bytes", false),
    ("mmap_trace_resident_bytes", false),
    ("mmap_trace_processes", false),
    ("mmap_trace_agent_ready", false),
];

impl Exporter {
    /// `cgroup`: the `--cgroup` the agent is narrowed to, whose container identity goes
    /// into the resource.
    pub fn start(config: OtlpConfig, cgroup: Option<&str>, metrics: &Metrics) -> Result<Self> {
        let url = |signal: &str| {
            config
                .endpoint
                .as_ref()
                .map(|base| format!("{}/v1/{signal}", base.trim_end_matches('/')))
        };
        if let Some(base) = &config.endpoint
            && !(base.starts_with("http://") || base.starts_with("https://"))
        {
            return Err(anyhow!(
                "--otlp-endpoint {base}: give an http:// URL (OTLP over HTTP/protobuf)"
            ));
        }
        if config
            .endpoint
            .as_deref()
            .is_some_and(|base| base.starts_with("https://"))
        {
            return Err(anyhow!(
                "--otlp-endpoint: this build sends OTLP over plain HTTP only (no TLS); use an \
                 http:// endpoint, e.g. a collector on the node"
            ));
        }
        let resource = resource(cgroup);
        let failures = &metrics.export_failures;
        let mut metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        if let Some(url) = url("metrics") {
            metric_exporter = metric_exporter.with_endpoint(url);
        }
        let metric_exporter = metric_exporter
            .build()
            .map_err(|e| anyhow!("OTLP metrics exporter: {e}"))?;
        let mut log_exporter = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        if let Some(url) = url("logs") {
            log_exporter = log_exporter.with_endpoint(url);
        }
        let log_exporter = log_exporter
            .build()
            .map_err(|e| anyhow!("OTLP logs exporter: {e}"))?;
        let mut reader = PeriodicReader::builder(Counted {
            inner: metric_exporter,
            failures: failures.get_or_create(&signal("metrics")).clone(),
        });
        if std::env::var_os("OTEL_METRIC_EXPORT_INTERVAL").is_none() {
            reader = reader.with_interval(config.interval);
        }
        let meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(reader.build())
            .build();
        let logs = SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(Counted {
                inner: log_exporter,
                failures: failures.get_or_create(&signal("logs")).clone(),
            })
            .build();
        let snapshot = Arc::new(Mutex::new(samples(&metrics.text())));
        let meter = meters.meter("mmap-trace");
        for &(name, counter) in FAMILIES {
            let snap = snapshot.clone();
            let observe = move |want_counter: bool| {
                let snap = snap.clone();
                move |emit: &mut dyn FnMut(f64, Vec<KeyValue>)| {
                    let total = format!("{name}_total");
                    let samples = snap.lock().unwrap_or_else(|e| e.into_inner());
                    for s in samples.iter().filter(|s| {
                        s.counter == want_counter && (s.name == name || s.name == total)
                    }) {
                        emit(s.value, attributes(&s.labels));
                    }
                }
            };
            if counter {
                let each = observe(true);
                meter
                    .u64_observable_counter(name)
                    .with_callback(move |o| each(&mut |v, a| o.observe(v as u64, &a)))
                    .build();
            } else {
                let each = observe(false);
                meter
                    .i64_observable_gauge(name)
                    .with_callback(move |o| each(&mut |v, a| o.observe(v as i64, &a)))
                    .build();
            }
        }
        let logger = logs.logger("mmap-trace");
        eprintln!(
            "mmap-trace: agent: OTLP metrics and logs to {}",
            config
                .endpoint
                .as_deref()
                .unwrap_or("the endpoint the OTEL_EXPORTER_OTLP_* variables name")
        );
        Ok(Self {
            meters,
            logs,
            logger,
            snapshot,
        })
    }

    /// The metrics as published now, and what to tell: `notable` mappings and the probes
    /// that lost events (`lost`: probe, how many more).
    pub fn publish(&self, metrics: &Metrics, notable: Vec<Notable>, lost: &[(Probe, u64)]) {
        for n in notable {
            metrics
                .notable
                .get_or_create(&super::metrics::NotableLabels {
                    kind: n.kind.name().to_owned(),
                })
                .inc();
            let mut record = self.logger.create_log_record();
            record.set_event_name(n.kind.name());
            record.set_severity_number(Severity::Warn);
            record.set_severity_text("WARN");
            let what = match n.kind {
                NotableKind::WritableExecutable => "writable and executable memory",
                NotableKind::Device => "a device mapping",
                NotableKind::Large => "a large mapping",
            };
            record.set_body(AnyValue::from(format!(
                "{} (pid {}) made {what}: {:#x}+{:#x} prot {:#x}{}",
                n.comm,
                n.pid,
                n.addr,
                n.len,
                n.prot,
                if n.path.is_empty() {
                    String::new()
                } else {
                    format!(" of {}", n.path)
                }
            )));
            record.add_attribute("process.pid", i64::from(n.pid));
            record.add_attribute("process.command", n.comm);
            record.add_attribute("cgroup", n.cgroup.clone());
            let identity = crate::process::cgroup::container_identity(&n.cgroup);
            if !identity.container_id.is_empty() {
                record.add_attribute("container.id", identity.container_id);
            }
            if !identity.pod_uid.is_empty() {
                record.add_attribute("k8s.pod.uid", identity.pod_uid);
            }
            record.add_attribute("mmap.addr", n.addr as i64);
            record.add_attribute("mmap.len", n.len as i64);
            record.add_attribute("mmap.prot", n.prot as i64);
            if !n.path.is_empty() {
                record.add_attribute("file.path", n.path);
            }
            self.logger.emit(record);
        }
        for &(probe, count) in lost {
            metrics
                .notable
                .get_or_create(&super::metrics::NotableLabels {
                    kind: "events_lost".to_owned(),
                })
                .inc();
            let mut record = self.logger.create_log_record();
            record.set_event_name("events_lost");
            record.set_severity_number(Severity::Error);
            record.set_severity_text("ERROR");
            record.set_body(AnyValue::from(format!(
                "{count} events of probe {} lost (ring buffer full)",
                probe.name()
            )));
            record.add_attribute("probe", probe.name());
            record.add_attribute("count", count as i64);
            self.logger.emit(record);
        }
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = samples(&metrics.text());
    }

    /// Sends what is left (the final metrics and logs); an endpoint that is down costs
    /// its retries and one line, never a hang past the exporters' timeouts.
    pub fn shutdown(self, metrics: &Metrics) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = samples(&metrics.text());
        let flushed = self.meters.force_flush();
        let logs = self.logs.shutdown();
        let meters = self.meters.shutdown();
        for (signal, result) in [("metrics", flushed.and(meters)), ("logs", logs)] {
            if let Err(e) = result {
                eprintln!("mmap-trace: warning: OTLP {signal}: the final export failed: {e}");
            }
        }
    }
}

fn signal(name: &str) -> SignalLabels {
    SignalLabels {
        signal: name.to_owned(),
    }
}

/// A series' labels as OTLP attributes: the container's under the semantic conventions'
/// names; empty values left out.
fn attributes(labels: &[(String, String)]) -> Vec<KeyValue> {
    labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let key = match k.as_str() {
                "container_id" => "container.id",
                "pod_uid" => "k8s.pod.uid",
                "comm" => "process.command",
                other => other,
            };
            KeyValue::new(key.to_owned(), v.clone())
        })
        .collect()
}

/// service.name (unless OTEL_SERVICE_NAME), host.name, and the container of `--cgroup`;
/// OTEL_RESOURCE_ATTRIBUTES is read by the SDK's own detector.
fn resource(cgroup: Option<&str>) -> Resource {
    let mut attrs = vec![KeyValue::new("host.name", host_name())];
    if let Some(path) = cgroup {
        attrs.push(KeyValue::new("cgroup", path.to_owned()));
        let id = crate::process::cgroup::container_identity(path);
        if !id.container_id.is_empty() {
            attrs.push(KeyValue::new("container.id", id.container_id));
        }
        if !id.runtime.is_empty() {
            attrs.push(KeyValue::new("container.runtime", id.runtime));
        }
        if !id.pod_uid.is_empty() {
            attrs.push(KeyValue::new("k8s.pod.uid", id.pod_uid));
        }
    }
    let builder = Resource::builder().with_attributes(attrs);
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        builder.build()
    } else {
        builder.with_service_name("mmap-trace-agent").build()
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// An exporter that counts its failed exports (after the exporter's own retries).
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    failures: Counter,
}

impl<E: PushMetricExporter> PushMetricExporter for Counted<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        if result.is_err() {
            self.failures.inc();
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

impl<E: LogExporter> LogExporter for Counted<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.failures.inc();
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
