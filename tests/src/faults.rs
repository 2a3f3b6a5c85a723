//! `trace --faults` on the workload's fault regions, checked the same way on the host and
//! in every guest: what differs is only what the fault source can tell of each fault.

use serde_json::Value;

use crate::{
    cli::{cli, json_lines, split_summary, stderr, stdout, workload_path},
    scenarios::FAULT_REGION_PAGES,
};

/// A value written as a `0x…` string (addresses in the JSON output).
pub fn hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a hex string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// `trace --faults --json -- mmap-workload --scenario NAME`: the trace's records and the
/// workload's own lines (its output goes to stderr when the trace is on stdout).
pub fn trace_scenario(name: &str) -> (Vec<Value>, Vec<Value>) {
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

/// The workload's `observe` values named `what`.
pub fn observed<'a>(own: &'a [Value], what: &str) -> Vec<&'a Value> {
    own.iter()
        .filter(|l| l["observe"] == what)
        .map(|l| &l["value"])
        .collect()
}

/// The summary's `faults_by_mapping` row of the mapping that starts at `start`.
pub fn mapping_row(summary: &Value, start: u64) -> &Value {
    summary["faults_by_mapping"]
        .as_array()
        .unwrap_or_else(|| panic!("no faults_by_mapping in the summary: {summary}"))
        .iter()
        .find(|m| hex(&m["start"]) == start)
        .unwrap_or_else(|| panic!("no summary row for {start:#x}: {summary}"))
}

/// What this architecture's fault source says of a write to a page not present yet:
/// x86's `exceptions:page_fault_user` carries the hardware error code (a write, not
/// present); arm64's perf software event carries no ESR, so neither is known.
fn write_fault_access() -> (&'static str, Option<bool>) {
    if cfg!(target_arch = "aarch64") {
        ("unknown", None)
    } else {
        ("write", Some(false))
    }
}

/// The `fault-regions` scenario traced with `--faults`: three regions of 1, 100 and
/// 10,000 pages written, exactly that many faults in each, all from user space, every one
/// attributed to the region's VMA as the workload mapped it, in the events and in the
/// summary; none on the PROT_NONE guard pages. Private anonymous memory has no
/// fault-around (that is for file pages), and the workload turns THP off for them.
pub fn assert_faults_per_region() {
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
    let (access, present) = write_fault_access();
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
            assert_eq!(f["access"], access, "{f}");
            if let Some(present) = present {
                assert_eq!(f["present"], present, "{f}");
            }
            assert_eq!(f["in_kernel"], false, "{f}");
            assert_eq!(hex(&f["vma"]["start"]), start, "attributed elsewhere: {f}");
            assert_eq!(hex(&f["vma"]["end"]), end, "attributed elsewhere: {f}");
            assert_eq!(f["vma"]["perms"], "rw-p", "{f}");
        }
        let row = mapping_row(summary, start);
        assert_eq!(hex(&row["end"]), end, "{row}");
        assert_eq!(row["faults"].as_u64(), Some(pages), "{row}");
        if access == "write" {
            assert_eq!(row["writes"].as_u64(), Some(pages), "{row}");
        }
        let guard = region["guard"].as_u64().unwrap();
        assert!(
            !faults
                .iter()
                .any(|f| (guard..guard + 4096).contains(&hex(&f["addr"]))),
            "a fault on a PROT_NONE guard page at {guard:#x}"
        );
    }
}
