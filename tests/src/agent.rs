//! For the agent's host tests: a real Prometheus server (Debian's `prometheus`, which
//! `cargo xtask setup` installs) scraping the agent, its HTTP query API, a plain HTTP
//! GET, the OTLP receiver (tests/scripts/otlp_receiver.py, with opentelemetry-proto),
//! and a copy of the workload under a name of its own (the agent's `--comm`).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Debian's Prometheus server.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// `GET path` on `addr` over HTTP/1.0: (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Calls `probe` until it returns Some, every 250 ms; after `limit` the test fails
/// loudly with `what` and the last state `describe` gives. A wait for a value to
/// arrive, not a timing assertion: the limit only bounds a hang.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("{what}: not seen after {limit:?}; last: {}", describe());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The workload copied to a file named `name` (its comm, at most 15 bytes).
pub fn named_workload(dir: &Path, name: &str) -> PathBuf {
    assert!(name.len() <= 15);
    let path = dir.join(name);
    std::fs::copy(crate::cli::workload_path(), &path).expect("copy the workload");
    path
}

/// A Prometheus server scraping `target` (host:port) every second, with its own data
/// directory; killed when dropped.
pub struct Prometheus {
    child: Child,
    pub addr: String,
    log: PathBuf,
}

impl Prometheus {
    pub fn start(dir: &Path, target: &str) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: `cargo xtask setup` installs Debian's prometheus"
        );
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: mmap-trace-agent\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus { child, addr, log };
        let log = p.log.clone();
        let read_log = move || std::fs::read_to_string(&log).unwrap_or_default();
        wait_for(
            "Prometheus ready",
            Duration::from_secs(60),
            || {
                if let Ok(Some(status)) = p.child.try_wait() {
                    panic!("prometheus exited ({status}): {}", read_log());
                }
                http_get(&p.addr, "/-/ready")
                    .ok()
                    .filter(|(code, _)| *code == 200)
            },
            &read_log,
        );
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query: each series' labels and value.
    pub fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let (code, body) = http_get(&self.addr, &format!("/api/v1/query?query={}", encode(expr)))
            .unwrap_or_else(|e| panic!("query {expr}: {e}"));
        assert_eq!(code, 200, "query {expr}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// The scrape target's health as Prometheus reports it.
    pub fn targets(&self) -> String {
        http_get(&self.addr, "/api/v1/targets")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encoding for a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The OTLP receiver; killed when dropped.
pub struct Receiver {
    child: Child,
    pub port: u16,
    pub out: PathBuf,
}

impl Receiver {
    pub fn start(dir: &Path, fail_first: u32) -> Self {
        let python = std::env::var_os("MMTRACE_OTLP_PYTHON").unwrap_or_else(|| {
            panic!(
                "MMTRACE_OTLP_PYTHON is not set: it names a Python with PyPI \
                 opentelemetry-proto (`cargo xtask test` makes one under target/perfetto-py)"
            )
        });
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join("otlp_receiver.py");
        let out = dir.join("otlp.jsonl");
        let mut child = Command::new(python)
            .arg(script)
            .arg(&out)
            .args(["--fail-first", &fail_first.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the receiver did not start: {line:?}"));
        Receiver { child, port, out }
    }

    /// Every request received so far, decoded.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of the samples of `name` in an OpenMetrics text whose labels include all of
/// `labels` (`key="value"` strings).
pub fn exposition_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
