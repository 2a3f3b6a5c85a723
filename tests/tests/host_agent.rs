//! Host tests of `mmap-trace agent` (issue 28): a real Prometheus scrapes it and reads
//! back the exact counts of a workload; what it sends over OTLP decodes with the
//! official opentelemetry-proto classes; bad input ends in one line; a compressed soak
//! of thousands of processes keeps its memory flat and its counts exact. Real eBPF, as
//! root; `cargo xtask test` runs them (MMTRACE_CLI, MMTRACE_WORKLOAD,
//! MMTRACE_OTLP_PYTHON) under the host lock.
//!
//! Ground truth for the counts: `mmap-trace trace` of the same processes (by the same
//! unique name) at the same time, which loses nothing and says so in its summary.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread::JoinHandle,
    time::Duration,
};

use mmap_trace_tests::{
    agent::{Prometheus, Receiver, exposition_sum, free_port, http_get, named_workload, wait_for},
    cli::{cli, json_lines, split_summary},
    stress::wait_ready,
};
use serde_json::Value;

/// One agent at a time in this binary (each counts by name, but the soak measures RSS).
static ONE: Mutex<()> = Mutex::new(());

fn one() -> std::sync::MutexGuard<'static, ()> {
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

const WAIT: Duration = Duration::from_secs(120);

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mmtrace-agent-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A unique process name for this run of `tag`.
fn comm(tag: &str) -> String {
    format!("ag{tag}{}", std::process::id() % 100_000)
}

struct Running {
    child: Child,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = cli()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mmap-trace");
        let stderr = Some(wait_ready(&mut child));
        Running { child, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `signal`, then its exit status and standard error.
    fn stop(mut self, signal: i32) -> (std::process::ExitStatus, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().unwrap();
        let err = self.stderr.take().unwrap().join().unwrap_or_default();
        (status, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `trace --json --comm NAME` of the five calls while `run` runs: per probe, the
/// events of processes named NAME (none lost).
fn traced_counts(
    name: &str,
    dir: &Path,
    extra: &[&str],
    run: impl FnOnce(),
) -> BTreeMap<String, u64> {
    let out = dir.join(format!("trace-{name}.jsonl"));
    let mut args = vec![
        "trace",
        "--json",
        "--comm",
        name,
        "--probes",
        "mmap,munmap,mprotect,mremap,brk",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let trace = Running::start(&args);
    run();
    let (status, err) = trace.stop(libc::SIGINT);
    assert!(status.success(), "trace failed: {err}");
    let records = json_lines(&std::fs::read_to_string(&out).unwrap());
    let (events, summary) = split_summary(&records);
    assert_eq!(
        summary["lost_total"], 0,
        "the ground truth lost events: {summary}"
    );
    let mut counts = BTreeMap::new();
    for e in events {
        *counts
            .entry(e["probe"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

fn run_workload(path: &Path, args: &[&str]) {
    let out = Command::new(path)
        .args(args)
        .output()
        .expect("run the workload");
    assert!(out.status.success(), "workload {args:?} failed");
}

/// maps' bytes by the agent's kinds, read from /proc/PID/maps (the kernel's view).
fn maps_by_kind(pid: u32) -> BTreeMap<&'static str, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut sums: BTreeMap<&'static str, u64> =
        ["anon", "file", "shared", "device", "stack", "heap"]
            .into_iter()
            .map(|k| (k, 0))
            .collect();
    for line in text.lines() {
        let fields: Vec<&str> = line.splitn(6, ' ').collect();
        let (range, perms) = (fields[0], fields[1]);
        let name = fields.get(5).map_or("", |n| n.trim_start());
        let (start, end) = range.split_once('-').unwrap();
        let len = u64::from_str_radix(end, 16).unwrap() - u64::from_str_radix(start, 16).unwrap();
        let shared = perms.ends_with('s');
        let kind = match name {
            "[heap]" => "heap",
            "[stack]" => "stack",
            "" => {
                if shared {
                    "shared"
                } else {
                    "anon"
                }
            }
            n if n.starts_with("[anon") => {
                if shared {
                    "shared"
                } else {
                    "anon"
                }
            }
            n if n.starts_with('[') => continue,
            n if n.starts_with("/dev/")
                && !n.starts_with("/dev/shm/")
                && !n.starts_with("/dev/zero") =>
            {
                "device"
            }
            _ if shared => "shared",
            _ => "file",
        };
        *sums.get_mut(kind).unwrap() += len;
    }
    sums
}

/// The "done when": the agent beside a known workload, scraped by a real
/// Prometheus, which then holds exactly the calls the workload made, per syscall; and
/// the live mapped bytes by kind of a process holding still are its maps' own.
#[test]
fn prometheus_reads_back_exact_counts() {
    let _one = one();
    let dir = scratch("prom");
    let name = comm("p");
    let workload = named_workload(&dir, &name);
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Running::start(&["agent", "--metrics-addr", &metrics, "--comm", &name]);
    let prometheus = Prometheus::start(&dir, &metrics);
    let expected = traced_counts(&name, &dir, &[], || {
        run_workload(&workload, &["--loop", "3000"]);
        run_workload(&workload, &[]);
        run_workload(&workload, &["--wx"]);
    });
    assert!(
        expected["mmap"] >= 3000 && expected["munmap"] >= 3000,
        "{expected:?}"
    );
    assert!(
        expected["mremap"] >= 1 && expected["brk"] >= 1,
        "{expected:?}"
    );
    let query = format!("sum by (syscall) (mmap_trace_syscalls_total{{comm=\"{name}\"}})");
    let seen = |p: &Prometheus| -> BTreeMap<String, u64> {
        p.query(&query)
            .into_iter()
            .filter_map(|(m, v)| Some((m["syscall"].as_str()?.to_owned(), v as u64)))
            .filter(|(s, _)| expected.contains_key(s))
            .collect()
    };
    wait_for(
        "Prometheus holding the traced counts",
        WAIT,
        || (seen(&prometheus) == expected).then_some(()),
        || {
            format!(
                "{:?} (want {expected:?}); targets: {}",
                seen(&prometheus),
                prometheus.targets()
            )
        },
    );
    eprintln!("Prometheus holds exactly {expected:?} for {name}");
    // Two writable+executable mappings in --wx, nothing else made any.
    let wx = format!("sum(mmap_trace_writable_executable_mappings_total{{comm=\"{name}\"}})");
    wait_for(
        "W+X count",
        WAIT,
        || {
            prometheus
                .query(&wx)
                .first()
                .filter(|(_, v)| *v == 2.0)
                .map(|_| ())
        },
        || format!("{:?}", prometheus.query(&wx)),
    );
    let lost = prometheus.query("sum(mmap_trace_events_lost_total)");
    assert!(lost.iter().all(|(_, v)| *v == 0.0), "lost: {lost:?}");

    // A process holding 512 one-page VMAs: the agent's bytes by kind are maps' own.
    let mut holder = hold_vmas(&workload, 512);
    let want = maps_by_kind(holder.id());
    assert!(want["anon"] >= 512 * 4096, "{want:?}");
    let mapped = |p: &Prometheus| -> BTreeMap<String, u64> {
        p.query(&format!(
            "sum by (kind) (mmap_trace_mapped_bytes{{comm=\"{name}\"}})"
        ))
        .into_iter()
        .map(|(m, v)| (m["kind"].as_str().unwrap_or("").to_owned(), v as u64))
        .collect()
    };
    let want_s: BTreeMap<String, u64> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    wait_for(
        "mapped bytes by kind = /proc/PID/maps",
        WAIT,
        || (mapped(&prometheus) == want_s).then_some(()),
        || format!("{:?} (maps: {want_s:?})", mapped(&prometheus)),
    );
    eprintln!("mapped bytes by kind as maps has them: {want_s:?}");
    holder.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(holder.wait().unwrap().success());
    // Exited: released, so nothing is mapped under the name any more.
    wait_for(
        "mapped bytes back to 0 after the exit",
        WAIT,
        || mapped(&prometheus).values().all(|v| *v == 0).then_some(()),
        || format!("{:?}", mapped(&prometheus)),
    );
    let agent_pid = agent.pid();
    let (status, err) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "agent {agent_pid}: {status}: {err}");
    assert!(
        err.contains("agent stopped (SIGTERM)") && !err.contains("panicked"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// OTLP/HTTP: the metrics and the notable events (two W+X mappings, one large one)
/// arrive, decode with opentelemetry-proto, carry the resource and the exact counts;
/// the receiver refuses the first request and the exporter's retry delivers it.
#[test]
fn otlp_decodes_with_opentelemetry_proto() {
    let _one = one();
    let dir = scratch("otlp");
    let name = comm("o");
    let workload = named_workload(&dir, &name);
    let receiver = Receiver::start(&dir, 1);
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let agent = Running::start(&[
        "agent",
        "--otlp-endpoint",
        &endpoint,
        "--otlp-interval",
        "1",
        "--comm",
        &name,
    ]);
    let expected = traced_counts(&name, &dir, &[], || {
        run_workload(&workload, &["--wx"]);
        run_workload(&workload, &["--loop", "100"]);
    });
    let (status, err) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("failed"),
        "{err}"
    );
    let requests = receiver.requests();
    assert!(
        requests.iter().all(|r| r.get("error").is_none()),
        "a request did not decode: {requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.get("refused").is_some()),
        "no request refused"
    );
    // The last metrics request holds the final counts (cumulative).
    let last = requests
        .iter()
        .rev()
        .find(|r| r["path"] == "/v1/metrics" && r.get("request").is_some())
        .expect("no metrics request");
    let rm = &last["request"]["resourceMetrics"][0];
    let attr = |attrs: &Value, key: &str| -> Option<String> {
        attrs
            .as_array()?
            .iter()
            .find(|a| a["key"] == key)
            .and_then(|a| {
                let v = &a["value"];
                v["stringValue"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| v["intValue"].as_str().map(str::to_owned))
            })
    };
    assert_eq!(
        attr(&rm["resource"]["attributes"], "service.name").as_deref(),
        Some("mmap-trace-agent")
    );
    let mut got = BTreeMap::new();
    for m in rm["scopeMetrics"][0]["metrics"].as_array().unwrap() {
        if m["name"] != "mmap_trace_syscalls" {
            continue;
        }
        assert_eq!(m["sum"]["isMonotonic"], true, "{m}");
        for p in m["sum"]["dataPoints"].as_array().unwrap() {
            if attr(&p["attributes"], "process.command").as_deref() != Some(name.as_str()) {
                continue;
            }
            let syscall = attr(&p["attributes"], "syscall").unwrap();
            let v: u64 = p["asInt"].as_str().unwrap().parse().unwrap();
            if expected.contains_key(&syscall) {
                got.insert(syscall, v);
            }
        }
    }
    assert_eq!(got, expected, "OTLP's final counts against the trace's");
    let logs: Vec<&Value> = requests
        .iter()
        .filter(|r| r["path"] == "/v1/logs")
        .filter_map(|r| r.get("request"))
        .flat_map(|r| r["resourceLogs"].as_array().unwrap())
        .flat_map(|rl| rl["scopeLogs"].as_array().unwrap())
        .flat_map(|sl| sl["logRecords"].as_array().unwrap())
        .filter(|l| attr(&l["attributes"], "process.command").as_deref() == Some(name.as_str()))
        .collect();
    let events: Vec<&str> = logs
        .iter()
        .filter_map(|l| l["eventName"].as_str())
        .collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == "writable_executable_mapping")
            .count(),
        2,
        "{logs:?}"
    );
    assert_eq!(
        events.iter().filter(|e| **e == "large_mapping").count(),
        1,
        "{logs:?}"
    );
    assert!(logs.iter().all(|l| l["severityText"] == "WARN"), "{logs:?}");
    eprintln!(
        "OTLP: {} requests, final counts {got:?}, logs {events:?}",
        requests.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An address in use, a cgroup that does not exist, nowhere to send: one line and exit
/// status 2. An endpoint that is down: the agent runs, counts the failed exports,
/// serves its metrics and stops cleanly.
#[test]
fn bad_input_is_one_line_never_a_panic() {
    let _one = one();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (args, says) in [
        (
            vec!["agent", "--metrics-addr", addr.as_str()],
            "the address is in use",
        ),
        (
            vec![
                "agent",
                "--metrics-addr",
                "127.0.0.1:0",
                "--cgroup",
                "/sys/fs/cgroup/no-such-cgroup",
            ],
            "no such cgroup directory",
        ),
        (vec!["agent"], "needs somewhere to put its metrics"),
        (
            vec!["agent", "--otlp-endpoint", "ftp://x"],
            "give an http:// URL",
        ),
    ] {
        let out = cli()
            .args(&args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(says) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    drop(taken);
    // Nothing listens on port 1: every export fails after its retries.
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Running::start(&[
        "agent",
        "--metrics-addr",
        &metrics,
        "--otlp-endpoint",
        "http://127.0.0.1:1",
        "--otlp-interval",
        "1",
        "--comm",
        "nobody-at-all",
    ]);
    let failures = || {
        http_get(&metrics, "/metrics").ok().map(|(_, body)| {
            exposition_sum(
                &body,
                "mmap_trace_otlp_export_failures_total",
                &["signal=\"metrics\""],
            )
        })
    };
    wait_for(
        "a failed OTLP export counted",
        WAIT,
        || failures().filter(|f| *f >= 1.0),
        || format!("{:?}", failures()),
    );
    let (code, body) = http_get(&metrics, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("mmap_trace_agent_ready 1") && body.trim_end().ends_with("# EOF"),
        "{body}"
    );
    let (status, err) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{err}");
    assert!(
        err.contains("agent stopped (SIGTERM)") && !err.contains("panicked"),
        "{err}"
    );
}

/// Hours of churn compressed: thousands of short processes under one name. The agent's
/// counts are exactly the processes times each one's calls, every process's state is
/// let go, and its resident memory after the churn is what it was after the first tenth
/// (within 8 MiB). MMTRACE_AGENT_SOAK_PROCESSES overrides the count (default 20,000).
#[test]
fn soak_keeps_memory_flat_and_counts_exact() {
    let _one = one();
    let processes: u64 = std::env::var("MMTRACE_AGENT_SOAK_PROCESSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = scratch("soak");
    let name = comm("s");
    let workload = named_workload(&dir, &name);
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Running::start(&["agent", "--metrics-addr", &metrics, "--comm", &name]);
    // One process's calls, from the trace.
    let per_process = traced_counts(&name, &dir, &[], || {
        run_workload(&workload, &["--loop", "5"])
    });
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let mut warm = 0;
    let batch = 8u64;
    let mut done = 0u64;
    while done < processes {
        let n = batch.min(processes - done);
        let children: Vec<Child> = (0..n)
            .map(|_| {
                Command::new(&workload)
                    .args(["--loop", "5"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        done += n;
        if warm == 0 && done >= processes / 10 {
            warm = rss(agent.pid());
        }
    }
    let total = processes + 1;
    let expected: BTreeMap<String, u64> = per_process
        .iter()
        .map(|(k, v)| (k.clone(), v * total))
        .collect();
    let counts = || -> BTreeMap<String, u64> {
        let Ok((_, body)) = http_get(&metrics, "/metrics") else {
            return BTreeMap::new();
        };
        expected
            .keys()
            .map(|k| {
                let label = format!("syscall=\"{k}\"");
                let comm = format!("comm=\"{name}\"");
                (
                    k.clone(),
                    exposition_sum(&body, "mmap_trace_syscalls_total", &[&label, &comm]) as u64,
                )
            })
            .collect()
    };
    wait_for(
        "the soak's exact counts",
        WAIT,
        || (counts() == expected).then_some(()),
        || format!("{:?} (want {expected:?})", counts()),
    );
    let modelled = || {
        http_get(&metrics, "/metrics")
            .ok()
            .map(|(_, b)| exposition_sum(&b, "mmap_trace_processes", &[]))
    };
    wait_for(
        "every process let go",
        WAIT,
        || modelled().filter(|n| *n == 0.0),
        || format!("{:?}", modelled()),
    );
    let end = rss(agent.pid());
    eprintln!(
        "soak: {total} processes of {name}, counts {expected:?}; agent RSS {warm} kB after \
         {} processes, {end} kB after {total}",
        processes / 10
    );
    assert!(
        end <= warm + 8192,
        "agent RSS grew from {warm} kB to {end} kB"
    );
    let (status, err) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--faults`: the agent's page faults of a process are exactly the fault records
/// `trace --faults` wrote for it (fault-regions: 10,101 written pages and its start-up's),
/// and resident memory by type has series for it, back at 0 once it exited.
#[test]
fn faults_are_counted_exactly() {
    let _one = one();
    let dir = scratch("faults");
    let name = comm("f");
    let workload = named_workload(&dir, &name);
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Running::start(&[
        "agent",
        "--metrics-addr",
        &metrics,
        "--comm",
        &name,
        "--faults",
    ]);
    let traced = traced_counts(&name, &dir, &["--faults"], || {
        run_workload(&workload, &["--scenario", "fault-regions"]);
    });
    let want = traced["fault"];
    assert!(want >= 10_101, "{traced:?}");
    let comm_label = format!("comm=\"{name}\"");
    let scrape = || {
        http_get(&metrics, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    wait_for(
        "page faults = trace's fault records",
        WAIT,
        || {
            let got = exposition_sum(&scrape(), "mmap_trace_page_faults_total", &[&comm_label]);
            (got as u64 == want).then_some(())
        },
        || {
            format!(
                "{} (want {want})",
                exposition_sum(&scrape(), "mmap_trace_page_faults_total", &[&comm_label])
            )
        },
    );
    // Resident memory is of live processes: one holding still (its file pages, the
    // binary's, cross the rss probe's 256 KiB steps), then gone.
    let mut holder = hold_vmas(&workload, 64);
    let resident = |body: &str| -> (usize, f64) {
        let series = body
            .lines()
            .filter(|l| l.starts_with("mmap_trace_resident_bytes{") && l.contains(&comm_label))
            .count();
        (
            series,
            exposition_sum(body, "mmap_trace_resident_bytes", &[&comm_label]),
        )
    };
    let held = wait_for(
        "resident bytes of the holder",
        WAIT,
        || Some(resident(&scrape())).filter(|(n, b)| *n == 4 && *b > 0.0),
        scrape,
    );
    holder.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(holder.wait().unwrap().success());
    wait_for(
        "resident bytes 0 after the exit",
        WAIT,
        || Some(resident(&scrape())).filter(|(n, b)| *n == 4 && *b == 0.0),
        scrape,
    );
    eprintln!("--faults: resident bytes while held: {}", held.1);
    eprintln!("--faults: {want} page faults, as trace recorded them");
    let (status, err) = agent.stop(libc::SIGINT);
    assert!(
        status.success() && err.contains("agent stopped (SIGINT)"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--cgroup` narrows the agent to a container's cgroup, and the container's id comes
/// from the path: a cgroup made here, named as docker names its scopes, holds one run of
/// the workload; a run outside it (same name) is not counted. Ground truth: trace with
/// the same `--comm` and `--cgroup`.
#[test]
fn cgroup_narrows_and_names_the_container() {
    let _one = one();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let root = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .find(|m| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(m).unwrap()) == 1)
        .expect("this test needs the cgroup v2 hierarchy's root mounted (see /proc/self/mounts)");
    let id = format!(
        "{:064x}",
        u128::from(std::process::id()) * 0x9e37_79b9_7f4a_7c15
    );
    let parent = root.join(format!("mmtrace-agent-{}", std::process::id()));
    let scope = parent.join(format!("docker-{id}.scope"));
    std::fs::create_dir_all(&scope).expect("create a cgroup");
    let dir = scratch("cgroup");
    let name = comm("c");
    let workload = named_workload(&dir, &name);
    let metrics = format!("127.0.0.1:{}", free_port());
    let scope_s = scope.to_str().unwrap().to_owned();
    let agent = Running::start(&[
        "agent",
        "--metrics-addr",
        &metrics,
        "--comm",
        &name,
        "--cgroup",
        &scope_s,
    ]);
    let expected = traced_counts(&name, &dir, &["--cgroup", &scope_s], || {
        let inside = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {} --loop 100",
                scope.display(),
                workload.display()
            ))
            .status()
            .unwrap();
        assert!(inside.success());
        run_workload(&workload, &["--loop", "50"]);
    });
    assert!(
        expected["mmap"] >= 100 && expected["mmap"] < 150,
        "{expected:?}"
    );
    let cgroup = format!(
        "cgroup=\"/{}/docker-{id}.scope\"",
        parent.file_name().unwrap().to_str().unwrap()
    );
    let container = format!("container_id=\"{id}\"");
    let comm_label = format!("comm=\"{name}\"");
    let counts = || -> BTreeMap<String, u64> {
        let body = http_get(&metrics, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        expected
            .keys()
            .map(|k| {
                let label = format!("syscall=\"{k}\"");
                let n = exposition_sum(
                    &body,
                    "mmap_trace_syscalls_total",
                    &[&label, &comm_label, &cgroup, &container],
                );
                (k.clone(), n as u64)
            })
            .collect()
    };
    wait_for(
        "the container's counts, and only its",
        WAIT,
        || (counts() == expected).then_some(()),
        || format!("{:?} (want {expected:?})", counts()),
    );
    eprintln!("--cgroup: {expected:?} under {cgroup} {container}");
    let (status, err) = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{err}");
    let _ = std::fs::remove_dir(&scope);
    let _ = std::fs::remove_dir(&parent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scrape while the agent starts (bound, probes not attached yet) or stops (draining,
/// flushing): every answer it gives is a whole exposition (`200`, ending in `# EOF`);
/// at the very exit a connection is refused or closed unanswered, never cut mid-body; and
/// the stop is clean. How many answers fall in each window depends on timing and is only
/// printed.
#[test]
fn scrapes_while_starting_and_stopping_are_well_formed() {
    let _one = one();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut child = cli()
        .args([
            "agent",
            "--metrics-addr",
            &metrics,
            "--comm",
            "nobody-at-all",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let well_formed = |(code, body): &(u16, String)| {
        assert_eq!(*code, 200, "{body}");
        assert!(
            body.trim_end().ends_with("# EOF"),
            "a cut exposition: {body:?}"
        );
        body.contains("mmap_trace_agent_ready 1")
    };
    let mut starting = 0;
    wait_for(
        "the agent ready",
        WAIT,
        || match http_get(&metrics, "/metrics") {
            Ok(answer) if well_formed(&answer) => Some(()),
            Ok(_) => {
                starting += 1;
                None
            }
            Err(_) => None, // not bound yet
        },
        || "no ready answer".to_owned(),
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (mut stopping, mut closed) = (0, 0);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        match http_get(&metrics, "/metrics") {
            // The connection was taken but closed unanswered as the process ended: a
            // scraper sees a refused scrape, never a partial exposition.
            Ok((0, body)) if body.is_empty() => closed += 1,
            Ok(answer) => {
                well_formed(&answer);
                stopping += 1;
            }
            Err(_) => closed += 1,
        }
    };
    assert!(status.success(), "{status}");
    eprintln!(
        "scrapes: {starting} while starting, {stopping} while stopping, all well-formed; \
         {closed} refused or closed unanswered at the exit"
    );
}

/// The workload holding `vmas` one-page mappings, once it said it is ready; it exits
/// when told `go` on its stdin.
fn hold_vmas(workload: &std::path::Path, vmas: u32) -> std::process::Child {
    let mut holder = Command::new(workload)
        .args(["--vmas", &vmas.to_string(), "--changes", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready", "mmap-workload --vmas {vmas}");
    holder
}
