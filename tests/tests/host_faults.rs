//! Host tests of `trace --faults` (issue 17): faults counted per mapping, exactly, and the
//! resident-set curve of a memset. Real eBPF, as root; `cargo xtask test` runs them (and
//! sets MMTRACE_CLI/MMTRACE_WORKLOAD).

use std::sync::Mutex;

use mmap_trace_tests::{
    cli::{cli, json_lines, split_summary, stderr, stdout, workload_path},
    scenarios::{COLD_PAGES, FAULT_REGION_PAGES},
};
use serde_json::Value;

/// One trace at a time in this binary.
static ONE: Mutex<()> = Mutex::new(());

fn one() -> std::sync::MutexGuard<'static, ()> {
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `trace --faults --json -- mmap-workload --scenario NAME`: the trace's records and the
/// workload's own lines (its output goes to stderr when the trace is on stdout).
fn trace_scenario(name: &str) -> (Vec<Value>, Vec<Value>) {
    let run = cli()
        .args(["trace", "--faults", "--json", "--"])
        .arg(workload_path())
        .args(["--scenario", name])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let own: Vec<Value> = stderr(&run)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (json_lines(&stdout(&run)), own)
}

fn hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a hex string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// The workload's `observe` values named `what`.
fn observed<'a>(own: &'a [Value], what: &str) -> Vec<&'a Value> {
    own.iter()
        .filter(|l| l["observe"] == what)
        .map(|l| &l["value"])
        .collect()
}

/// Three regions, 1, 100 and 10,000 pages written: exactly that many faults in each, all
/// writes to pages not present yet, every one attributed to the region's VMA as the
/// workload mapped it, in the events and in the summary. Private anonymous memory has
/// no fault-around (that is for file pages), and the workload turns THP off for them.
#[test]
fn faults_per_region_are_exact() {
    let _one = one();
    let (records, own) = trace_scenario("fault-regions");
    let (events, summary) = split_summary(&records);
    assert_eq!(summary["lost_total"], 0, "{summary}");
    assert!(
        summary["probes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "fault"),
        "{summary}"
    );
    let touched = observed(&own, "touched");
    assert_eq!(touched.len(), FAULT_REGION_PAGES.len(), "{own:?}");
    let faults: Vec<&Value> = events.iter().filter(|e| e["probe"] == "fault").collect();
    for (region, pages) in touched.iter().zip(FAULT_REGION_PAGES) {
        let start = region["addr"].as_u64().unwrap();
        let end = start + region["len"].as_u64().unwrap();
        let inside: Vec<&&Value> = faults
            .iter()
            .filter(|f| (start..end).contains(&hex(&f["addr"])))
            .collect();
        assert_eq!(
            inside.len() as u64,
            pages,
            "faults in {start:#x}-{end:#x} ({pages} pages written)"
        );
        for f in &inside {
            assert_eq!(f["access"], "write", "{f}");
            assert_eq!(f["present"], false, "{f}");
            assert_eq!(f["in_kernel"], false, "{f}");
            assert_eq!(hex(&f["vma"]["start"]), start, "attributed elsewhere: {f}");
            assert_eq!(hex(&f["vma"]["end"]), end, "attributed elsewhere: {f}");
            assert_eq!(f["vma"]["perms"], "rw-p", "{f}");
        }
        let row = summary["faults_by_mapping"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| hex(&m["start"]) == start)
            .unwrap_or_else(|| panic!("no summary row for {start:#x}: {summary}"));
        assert_eq!(hex(&row["end"]), end, "{row}");
        assert_eq!(row["faults"].as_u64(), Some(pages), "{row}");
        assert_eq!(row["writes"].as_u64(), Some(pages), "{row}");
    }
    // The guard pages were never touched.
    for region in &touched {
        let guard = region["guard"].as_u64().unwrap();
        assert!(
            !faults
                .iter()
                .any(|f| (guard..guard + 4096).contains(&hex(&f["addr"]))),
            "a fault on a PROT_NONE guard page"
        );
    }
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
    // The thread's major-fault count grows by one per page.
    let first = faults[0]["maj_flt"].as_u64().unwrap();
    let last = faults[faults.len() - 1]["maj_flt"].as_u64().unwrap();
    assert_eq!(
        last - first,
        COLD_PAGES - 1,
        "maj_flt from the first to the last read"
    );
    let row = summary["faults_by_mapping"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| hex(&m["start"]) == start)
        .unwrap_or_else(|| panic!("no summary row for {start:#x}: {summary}"));
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
