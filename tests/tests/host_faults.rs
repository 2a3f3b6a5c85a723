//! Host tests of `trace --faults` (issue 17): faults counted per mapping, exactly, and the
//! resident-set curve of a memset. Real eBPF, as root; `cargo xtask test` runs them (and
//! sets MMTRACE_CLI/MMTRACE_WORKLOAD).

use std::sync::Mutex;

use mmap_trace_tests::{
    cli::{cli, split_summary, stderr, stdout, workload_path},
    faults::{self, hex, observed, trace_scenario},
    scenarios::COLD_PAGES,
};
use serde_json::Value;

/// One trace at a time in this binary.
static ONE: Mutex<()> = Mutex::new(());

fn one() -> std::sync::MutexGuard<'static, ()> {
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Three regions, 1, 100 and 10,000 pages written: exactly that many faults in each
/// (the checks: `faults::assert_faults_per_region`, shared with the guests).
#[test]
fn faults_per_region_are_exact() {
    let _one = one();
    faults::assert_faults_per_region();
}

/// The rss probe's curve for a 64 MiB memset rises by 64 MiB: from the last anon record
/// before the mapping to the peak. Each record is exact; the curve never strays more
/// than one 256 KiB step between records, so the rise is within two steps of 64 MiB
/// (plus what the workload's own printing allocates).
#[test]
fn rss_curve_of_a_memset() {
    let _one = one();
    let (records, own) = trace_scenario("memset-64m");
    let (events, summary) = split_summary(&records);
    assert_eq!(summary["lost_total"], 0, "{summary}");
    let memset = observed(&own, "memset");
    let addr = memset[0]["addr"].as_u64().unwrap();
    let pid = events.iter().find(|e| e["probe"] == "exec").unwrap()["pid"].clone();
    let mmap_ts = events
        .iter()
        .find(|e| {
            e["probe"] == "mmap"
                && e["ret_addr"].as_str().map(|_| hex(&e["ret_addr"])) == Some(addr)
        })
        .unwrap_or_else(|| panic!("no traced mmap returned {addr:#x}"))["ts_ns"]
        .as_u64()
        .unwrap();
    let anon: Vec<(u64, i64)> = events
        .iter()
        .filter(|e| e["probe"] == "rss" && e["member"] == "anon" && e["pid"] == pid)
        .map(|e| (e["ts_ns"].as_u64().unwrap(), e["bytes"].as_i64().unwrap()))
        .collect();
    let before = anon
        .iter()
        .rfind(|(t, _)| *t < mmap_ts)
        .map(|(_, b)| *b)
        .unwrap_or(0);
    let peak = anon.iter().map(|(_, b)| *b).max().unwrap();
    let rise = peak - before;
    const MIB: i64 = 1 << 20;
    assert!(
        (64 * MIB - MIB / 2..=64 * MIB + MIB).contains(&rise),
        "anon rose by {rise} bytes (from {before} to {peak}), not 64 MiB"
    );
    // Steps of 256 KiB: at least 256 records on the way up.
    let rising = anon.iter().filter(|(t, _)| *t >= mmap_ts).count();
    assert!(rising >= 256, "{rising} anon records after the mmap");
    // The memset's faults are all in its mapping.
    let len = memset[0]["len"].as_u64().unwrap();
    let in_it = events
        .iter()
        .filter(|e| e["probe"] == "fault" && (addr..addr + len).contains(&hex(&e["addr"])))
        .count() as u64;
    assert_eq!(in_it, len / 4096, "faults in the 64 MiB memset");
    let resident = summary["resident"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == pid && r["member"] == "anon")
        .unwrap_or_else(|| panic!("no resident anon line: {summary}"));
    assert_eq!(resident["peak_bytes"].as_i64(), Some(peak), "{resident}");
}

/// The table lists faults per mapping in its summary, not one row per fault.
#[test]
fn table_summarises_faults_by_mapping() {
    let _one = one();
    let run = cli()
        .args(["trace", "--faults", "--"])
        .arg(workload_path())
        .args(["--scenario", "fault-regions"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let table = stdout(&run);
    assert!(
        !table
            .lines()
            .any(|l| !l.starts_with('#') && l.contains(" fault ")),
        "a fault row in the table:\n{table}"
    );
    assert!(table.contains("# faults by mapping"), "{table}");
    let top = table
        .lines()
        .skip_while(|l| !l.starts_with("# faults by mapping"))
        .nth(1)
        .unwrap();
    assert!(
        top.contains(" 10000 faults (10000 writes, 0 on present pages, 0 needed I/O)"),
        "{top}"
    );
}

/// A file mapping read page by page with nothing in the page cache and no readahead:
/// every fault needed I/O, and the summary says so (`major`, from each thread's `maj_flt`
/// at its next fault); the anonymous regions' faults needed none.
#[test]
fn faults_that_needed_io_are_counted() {
    let _one = one();
    let (records, own) = trace_scenario("file-cold");
    let (events, summary) = split_summary(&records);
    assert_eq!(summary["lost_total"], 0, "{summary}");
    let cold = observed(&own, "cold")[0];
    assert_eq!(cold["cached"], 0, "the page cache kept the file: {cold}");
    let start = cold["addr"].as_u64().unwrap();
    let end = start + cold["len"].as_u64().unwrap();
    // By the mapping, not the range: the 256 KiB buffer that wrote the file was an
    // anonymous mapping at the same addresses a moment before.
    let faults: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["probe"] == "fault"
                && e["vma"]["start"].as_str().map(|_| hex(&e["vma"]["start"])) == Some(start)
                && e["vma"]["end"].as_str().map(|_| hex(&e["vma"]["end"])) == Some(end)
        })
        .collect();
    assert_eq!(faults.len() as u64, COLD_PAGES, "a fault per page read");
    assert!(faults.iter().all(|f| f["access"] == "read"), "{faults:?}");
    // The thread's major-fault count grows by (at least) one per page: a page of the
    // workload's own code or data read back in between, when another program pressed
    // the page cache, is a major fault of the same thread too.
    let first = faults[0]["maj_flt"].as_u64().unwrap();
    let last = faults[faults.len() - 1]["maj_flt"].as_u64().unwrap();
    assert!(
        last - first >= COLD_PAGES - 1,
        "maj_flt grew by {} from the first to the last of {COLD_PAGES} reads",
        last - first
    );
    let row = faults::mapping_row(summary, start);
    assert_eq!(row["faults"].as_u64(), Some(COLD_PAGES), "{row}");
    assert_eq!(row["major"].as_u64(), Some(COLD_PAGES), "{row}");
    assert_eq!(row["perms"], "r--p", "{row}");

    let (records, _) = trace_scenario("fault-regions");
    let (_, summary) = split_summary(&records);
    for row in summary["faults_by_mapping"].as_array().unwrap() {
        if row["perms"] == "rw-p" && row["name"] == "" {
            assert_eq!(row["major"], 0, "anonymous memory needed I/O: {row}");
        }
    }
}
