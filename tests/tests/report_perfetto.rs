//! `mmap-trace report --perfetto` on recorded traces (tests/fixtures/): the real CLI
//! writes the file and perfetto's own generated protobuf classes (PyPI `perfetto`, in the
//! venv `cargo xtask test` makes; MMTRACE_PERFETTO_PYTHON) decode it back. Every field
//! must be one perfetto defines, and the tracks, slices and counters must be the model's
//! (as the text report counts them). Host-only and unprivileged.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use mmap_trace_tests::cli::{cli, stderr, stdout};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn decode(file: &Path) -> Value {
    let python = std::env::var_os("MMTRACE_PERFETTO_PYTHON").unwrap_or_else(|| {
        panic!(
            "MMTRACE_PERFETTO_PYTHON is not set: it names a Python with PyPI `perfetto` \
             (`cargo xtask test` makes one under target/perfetto-py)"
        )
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join("perfetto_decode.py");
    let run = Command::new(python)
        .arg(script)
        .arg(file)
        .output()
        .expect("run the decoder");
    assert!(
        run.status.success(),
        "perfetto's classes cannot decode {}: {}",
        file.display(),
        stderr(&run)
    );
    serde_json::from_str(&stdout(&run)).expect("the decoder's JSON")
}

/// Per process from the text report: (pid, comm, VMA intervals, bytes mapped at the end).
fn text_report(trace: &Path) -> Vec<(u64, String, usize, f64)> {
    let run = cli().arg("report").arg(trace).output().unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let text = stdout(&run);
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("pid ") {
            // `pid 22962 (mmap-workload): 24 events …`
            let (pid, rest) = rest.split_once(" (").unwrap();
            let comm = rest.split_once("):").unwrap().0;
            out.push((pid.parse().unwrap(), comm.to_string(), 0, 0.0));
        } else if let Some(rest) = line.trim().strip_prefix("timeline:") {
            // `15 VMA intervals (0 device, 0 driver); at the end 2 VMAs, 136 KiB`
            let last = out.last_mut().unwrap();
            last.2 = rest.split_whitespace().next().unwrap().parse().unwrap();
            let end = rest.rsplit_once(", ").unwrap().1;
            let (n, unit) = end.split_once(' ').unwrap();
            let scale = match unit {
                "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => 1024.0 * 1024.0,
                "GiB" => 1024.0 * 1024.0 * 1024.0,
                other => panic!("unit {other} in {line:?}"),
            };
            last.3 = n.parse::<f64>().unwrap() * scale;
        }
    }
    assert!(!out.is_empty(), "no process in the text report:\n{text}");
    out
}

fn round_trip(name: &str) {
    let trace = fixture(name);
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.pftrace"));
    let run = cli()
        .arg("report")
        .arg(&trace)
        .arg("--perfetto")
        .arg(&file)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stdout(&run).is_empty(),
        "--perfetto alone prints no text report"
    );
    let decoded = decode(&file);
    assert_eq!(
        decoded["unknown_fields"],
        serde_json::json!([]),
        "fields perfetto does not define"
    );

    let tracks = decoded["tracks"].as_array().unwrap();
    let events = decoded["events"].as_array().unwrap();
    let uuid = |v: &Value| v.as_u64().unwrap();
    let parent_of: BTreeMap<u64, u64> = tracks
        .iter()
        .filter(|t| t.get("parent").is_some())
        .map(|t| (uuid(&t["uuid"]), uuid(&t["parent"])))
        .collect();
    for (pid, comm, intervals, end_bytes) in text_report(&trace) {
        let process: Vec<&Value> = tracks
            .iter()
            .filter(|t| t["pid"].as_u64() == Some(pid))
            .collect();
        assert_eq!(
            process.len(),
            1,
            "one process track for pid {pid}: {tracks:?}"
        );
        assert_eq!(process[0]["process_name"], comm.as_str());
        let process_uuid = uuid(&process[0]["uuid"]);
        let children: Vec<&Value> = tracks
            .iter()
            .filter(|t| t["parent"].as_u64() == Some(process_uuid))
            .collect();
        let counters: Vec<&&Value> = children
            .iter()
            .filter(|t| t.get("counter_unit").is_some())
            .collect();
        assert_eq!(counters.len(), 1, "one counter track for pid {pid}");
        assert_eq!(counters[0]["counter_unit"], "UNIT_SIZE_BYTES");
        let counter_uuid = uuid(&counters[0]["uuid"]);

        // Slices: one per VMA interval of the model, each begin closed by an end on the
        // same lane before the next begins (Perfetto nests slices on a track).
        let mut open: BTreeMap<u64, &Value> = BTreeMap::new();
        let mut slices = 0;
        let mut last_ts = 0;
        let mut counter_values = Vec::new();
        for e in events {
            let track = uuid(&e["track"]);
            let ts = e["ts"].as_u64().unwrap();
            assert!(ts >= last_ts, "events out of time order: {e}");
            last_ts = ts;
            if track == counter_uuid {
                assert_eq!(e["type"], "TYPE_COUNTER", "{e}");
                counter_values.push(e["value"].as_i64().unwrap());
                continue;
            }
            if parent_of.get(&track) != Some(&process_uuid) {
                continue;
            }
            match e["type"].as_str().unwrap() {
                "TYPE_SLICE_BEGIN" => {
                    assert!(
                        open.insert(track, e).is_none(),
                        "two open slices on one lane: {e}"
                    );
                    let args = &e["args"];
                    let start = u64::from_str_radix(
                        args["start"].as_str().unwrap().trim_start_matches("0x"),
                        16,
                    )
                    .unwrap();
                    let end = u64::from_str_radix(
                        args["end"].as_str().unwrap().trim_start_matches("0x"),
                        16,
                    )
                    .unwrap();
                    assert_eq!(args["len"].as_u64(), Some(end - start), "{e}");
                    assert!(
                        e["name"]
                            .as_str()
                            .unwrap()
                            .starts_with(args["prot"].as_str().unwrap()),
                        "{e}"
                    );
                    slices += 1;
                }
                "TYPE_SLICE_END" => {
                    let begin = open
                        .remove(&track)
                        .unwrap_or_else(|| panic!("an end without a begin: {e}"));
                    assert!(uuid(&begin["ts"]) <= ts);
                }
                other => panic!("unexpected {other} on a lane: {e}"),
            }
        }
        assert!(open.is_empty(), "slices never ended: {open:?}");
        assert_eq!(
            slices, intervals,
            "pid {pid}: slices vs the model's VMA intervals"
        );
        // The counter ends at what the text report says is mapped at the end.
        let last = counter_values.last().copied().unwrap_or(0) as f64;
        assert!(
            (last - end_bytes).abs() <= end_bytes * 0.05,
            "pid {pid}: the counter ends at {last} bytes, the text report says {end_bytes}"
        );
        assert!(counter_values.iter().all(|v| *v >= 0));
    }
}

#[test]
fn perfetto_round_trips_a_host_trace() {
    round_trip("host-workload.jsonl");
}

#[test]
fn perfetto_round_trips_a_driver_trace() {
    round_trip("guest-driver.jsonl");
}

#[test]
fn perfetto_round_trips_a_synthetic_trace() {
    round_trip("synthetic.jsonl");
}
