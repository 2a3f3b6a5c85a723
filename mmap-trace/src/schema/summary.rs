//! `{"type":"summary",…}`: the last record of `trace` and `verify`. What each command adds
//! to it is its own type here ([`VerifyStats`](super::VerifyStats), [`FaultsSummary`]);
//! the commands fill them.

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{MapAccess, Visitor},
    ser::SerializeMap as _,
};

use super::{Hex, Record, VerifyStats};

/// What a finished trace counted. Every field defaults when read, so a summary of any
/// age (or `verify-driver`'s, which shares the type) still reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SummaryRecord {
    /// Events written, per attached probe.
    pub events: PerProbe,
    /// Ring-buffer reservations that failed, per attached probe.
    pub lost: PerProbe,
    pub events_total: u64,
    pub lost_total: u64,
    /// Records the decoder refused (never expected; counted, not hidden).
    pub malformed: u64,
    pub duration_s: f64,
    /// `command exited (…)`, `target process exited`, `SIGINT`, `SIGTERM`, `duration
    /// elapsed` or `output closed`.
    pub ended: String,
    /// The attached probes, in attach order.
    pub probes: Vec<String>,
    /// `verify`'s counts.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyStats>,
    /// `trace --faults`: faults per mapping and resident memory per process.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultsSummary>,
}

impl Record for SummaryRecord {
    const TYPE: &'static str = "summary";
}

/// A count per probe, as a JSON object in probe order (`{"mmap":8,"munmap":3}`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PerProbe(pub Vec<(String, u64)>);

impl PerProbe {
    pub fn get(&self, probe: &str) -> Option<u64> {
        self.0.iter().find(|(p, _)| p == probe).map(|(_, n)| *n)
    }
}

impl Serialize for PerProbe {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (probe, n) in &self.0 {
            map.serialize_entry(probe, n)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for PerProbe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PerProbeVisitor;
        impl<'de> Visitor<'de> for PerProbeVisitor {
            type Value = PerProbe;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of counts by probe name")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PerProbe, A::Error> {
                let mut counts = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    counts.push(entry);
                }
                Ok(PerProbe(counts))
            }
        }
        d.deserialize_map(PerProbeVisitor)
    }
}

/// `trace --faults`' part of the summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultsSummary {
    /// Every mapping that faulted, most faults first.
    pub faults_by_mapping: Vec<FaultedMapping>,
    /// Faults at addresses no known mapping held.
    #[serde(default)]
    pub faults_unattributed: u64,
    /// Per process and type, from the rss records.
    #[serde(default)]
    pub resident: Vec<ResidentMemory>,
    /// Rows of exited processes left out past the summary's bound (the fewest-faults
    /// mappings, the smallest resident peaks), and the faults those mappings held: a
    /// system-wide trace outlives any number of processes in bounded memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_out: Option<LeftOut>,
}

/// What [`FaultsSummary`] left out of exited processes' rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeftOut {
    pub mappings: u64,
    pub faults: u64,
    pub resident: u64,
}

/// A mapping's faults: the range is the model's at its first fault (a later split or
/// merge makes a new row).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultedMapping {
    pub pid: u32,
    pub start: Hex,
    pub end: Hex,
    pub perms: String,
    /// maps' name column (empty for anonymous memory), `name_hex` beside it where it is
    /// not UTF-8.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_hex: Option<String>,
    pub faults: u64,
    /// Of them, write faults and faults on present pages (copy-on-write, protection).
    pub writes: u64,
    pub present: u64,
    /// Of them, faults that needed I/O (the kernel's major faults).
    pub major: u64,
    /// CLOCK_MONOTONIC ns of the first fault.
    pub first_ns: u64,
}

/// A process's resident memory of one type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResidentMemory {
    pub pid: u32,
    /// `anon`, `file`, `shmem` or `swap`.
    pub member: String,
    /// Bytes at the first and the last record, and the most seen.
    pub first_bytes: i64,
    pub last_bytes: i64,
    pub peak_bytes: i64,
}
