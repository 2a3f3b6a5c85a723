//! `verify`'s records (`process`, `mismatch`, `unmodelled` and its part of the summary)
//! and `verify-driver`'s (`check` and its summary).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{Hex, Record};
use crate::space::Field;

/// What `verify` counted, for one process (its `process` record) or all (the summary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyStats {
    /// Processes checked (the summary's total; absent from a process's own record).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub processes: u64,
    pub checkpoints: u64,
    pub mismatches: u64,
    /// Checkpoints where a change the shadow does not model (named by the catch-all) was
    /// adopted from the kernel's view.
    #[serde(default)]
    pub unmodelled: u64,
    /// Failed calls that had changed part of their ranges (adopted, `partial` records).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub partial: u64,
    /// Present file pages whose PFN was compared with pagemap.
    #[serde(default)]
    pub pfn_checks: u64,
    /// Different file pages (file and index) among them: what the run covered.
    #[serde(default)]
    pub pfn_pages: u64,
    /// Checkpoints whose page check compared every known page (the rest compared only
    /// the pages that could have changed: see verify/pages.rs).
    #[serde(default)]
    pub pfn_full_passes: u64,
    /// pread calls on /proc/<pid>/pagemap, and the entries they read.
    #[serde(default)]
    pub pagemap_reads: u64,
    #[serde(default)]
    pub pagemap_entries: u64,
    /// Checkpoints that read /proc/<pid>/maps whole; the others asked the kernel only
    /// about the ranges their calls touched (`PROCMAP_QUERY`), this many VMAs in all.
    #[serde(default)]
    pub maps_whole_reads: u64,
    #[serde(default)]
    pub maps_queried_vmas: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl VerifyStats {
    /// Adds another process's counts (`processes` is the caller's to set).
    pub fn add(&mut self, other: &VerifyStats) {
        self.checkpoints += other.checkpoints;
        self.mismatches += other.mismatches;
        self.unmodelled += other.unmodelled;
        self.partial += other.partial;
        self.pfn_checks += other.pfn_checks;
        self.pfn_pages += other.pfn_pages;
        self.pfn_full_passes += other.pfn_full_passes;
        self.pagemap_reads += other.pagemap_reads;
        self.pagemap_entries += other.pagemap_entries;
        self.maps_whole_reads += other.maps_whole_reads;
        self.maps_queried_vmas += other.maps_queried_vmas;
    }
}

/// One process's account, written before the summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord<'a> {
    pub pid: u32,
    /// The process it was forked from (absent for the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    #[serde(flatten)]
    pub stats: VerifyStats,
    #[serde(borrow)]
    pub ended: Cow<'a, str>,
}

impl Record for ProcessRecord<'_> {
    const TYPE: &'static str = "process";
}

/// The shadow and the kernel disagree about a range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MismatchRecord<'a> {
    pub pid: u32,
    pub checkpoint: u64,
    /// The last event applied before the comparison (the one that made the difference).
    #[serde(borrow)]
    pub after_probe: Cow<'a, str>,
    pub after_ts_ns: u64,
    pub start: Hex,
    pub end: Hex,
    pub field: Field,
    /// What the events imply, and what the kernel shows.
    #[serde(borrow)]
    pub expected: Cow<'a, str>,
    #[serde(borrow)]
    pub found: Cow<'a, str>,
}

impl Record for MismatchRecord<'_> {
    const TYPE: &'static str = "mismatch";
}

/// A change the shadow does not model, caught by the catch-all and adopted from the
/// kernel's view (never a mismatch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnmodelledRecord<'a> {
    pub pid: u32,
    pub checkpoint: u64,
    /// The syscall's name, `fault` (stack growth) or `kernel (COMM)` (another task).
    pub cause: String,
    /// What the kernel shows now where the shadow differed.
    #[serde(borrow)]
    pub ranges: Vec<AdoptedRange<'a>>,
}

impl Record for UnmodelledRecord<'_> {
    const TYPE: &'static str = "unmodelled";
}

/// A call that failed after changing part of what it was asked to, and what the kernel
/// shows where it did (adopted: never a mismatch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialRecord<'a> {
    pub pid: u32,
    pub checkpoint: u64,
    /// The call's name.
    #[serde(borrow)]
    pub call: Cow<'a, str>,
    /// Its error (`EPERM`).
    pub error: String,
    #[serde(borrow)]
    pub ranges: Vec<AdoptedRange<'a>>,
}

impl Record for PartialRecord<'_> {
    const TYPE: &'static str = "partial";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdoptedRange<'a> {
    pub start: Hex,
    pub end: Hex,
    pub field: Field,
    #[serde(borrow)]
    pub expected: Cow<'a, str>,
    #[serde(borrow)]
    pub found: Cow<'a, str>,
}

/// `verify-driver`: one check of one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub device: String,
    pub check: String,
    /// True for PASS only.
    pub pass: bool,
    pub result: Verdict,
    pub detail: String,
}

impl Record for CheckRecord {
    const TYPE: &'static str = "check";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "FAIL")]
    Fail,
    /// The check cannot apply to this device (the detail says why).
    #[serde(rename = "n/a")]
    NotApplicable,
}

impl Verdict {
    /// As the JSON has it (the table's RESULT column).
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NotApplicable => "n/a",
        }
    }
}

/// `verify-driver`'s last record: how many checks and how they came out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverSummaryRecord {
    pub checks: u64,
    pub passed: u64,
    pub failed: u64,
    pub not_applicable: u64,
}

impl Record for DriverSummaryRecord {
    const TYPE: &'static str = "summary";
}
