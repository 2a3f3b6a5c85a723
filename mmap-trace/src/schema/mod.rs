//! The JSON Lines records, once (docs/json-schema.md): every record `trace`, `verify` and
//! `verify-driver` write and `report` reads, as typed Rust that serializes to exactly the
//! documented bytes and deserializes from them.
//!
//! Owns: the record types and their `type` ([`Record`]), how 64-bit values are written
//! ([`Hex`]), names as bytes (`…_hex`: [`text_and_hex`]) and the `key=value` flattening the
//! table and the report show ([`details`]). May not touch: the kernel, the traced
//! processes, files or the terminal; the one type it borrows is the address-space
//! model's [`Field`] (what a mismatch is about). Commands fill these records, `output`
//! writes them (with a hand-written fast path pinned to them by its tests), `report`
//! reads them.

mod event;
mod flatten;
mod summary;
mod verify;

use std::{borrow::Cow, fmt};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

pub use crate::space::Field;
pub use event::{
    Access, Body, Brk, DriverMmap, EventRecord, Fault, FaultVma, File, Fork, Frame, MmLock, Mmap,
    MmapRegion, Mprotect, Mremap, Munmap, Outcome, PageCache, PageInsert, PathFields,
    RemapPfnRange, Rss, Vma,
};
pub use flatten::{Detail, Text, details, details_line};
pub use summary::{
    FaultedMapping, FaultsSummary, LeftOut, PerProbe, ResidentMemory, SummaryRecord,
};
pub use verify::{
    AdoptedRange, CheckRecord, DriverSummaryRecord, MismatchRecord, PartialRecord, ProcessRecord,
    UnmodelledRecord, Verdict, VerifyStats,
};

/// A JSON Lines record: its `type` (the first key of its line) and its fields.
pub trait Record: Serialize {
    const TYPE: &'static str;
}

/// A record as one JSON object: `{"type":…}` first, then its fields. What every writer of
/// records serializes, so no record carries its type twice.
#[derive(Serialize)]
pub struct Tagged<'a, T: Record> {
    #[serde(rename = "type")]
    record_type: &'static str,
    #[serde(flatten)]
    record: &'a T,
}

impl<'a, T: Record> Tagged<'a, T> {
    pub fn new(record: &'a T) -> Self {
        Self {
            record_type: T::TYPE,
            record,
        }
    }
}

/// A u64 written as a `"0x…"` string (JSON numbers lose precision above 2^53). Read back
/// from that, and, as older readers did, from a number or a decimal string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HexVisitor;
        impl de::Visitor<'_> for HexVisitor {
            type Value = Hex;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a \"0x…\" string or a number")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Hex, E> {
                Ok(Hex(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Hex, E> {
                Ok(Hex(v as u64))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Hex, E> {
                let parsed = match v.strip_prefix("0x") {
                    Some(digits) => u64::from_str_radix(digits, 16),
                    None => v.parse(),
                };
                parsed
                    .map(Hex)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(HexVisitor)
    }
}

impl fmt::LowerHex for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// Bytes as a JSON string (invalid UTF-8 replaced) and, only where something was
/// replaced, the exact bytes in lowercase hex: the `name`/`name_hex` pair of every name
/// the kernel holds as bytes (comms, file names, paths).
pub fn text_and_hex(bytes: &[u8]) -> (Cow<'_, str>, Option<String>) {
    let text = String::from_utf8_lossy(bytes);
    let hex = matches!(text, Cow::Owned(_)).then(|| hex(bytes));
    (text, hex)
}

/// The exact bytes of a name read back: its `…_hex` where there is one, else its text.
pub fn exact_bytes<'a>(text: &'a str, hex: Option<&str>) -> Cow<'a, [u8]> {
    match hex.and_then(unhex) {
        Some(bytes) => Cow::Owned(bytes),
        None => Cow::Borrowed(text.as_bytes()),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_reads_what_it_writes_and_what_old_readers_took() {
        for v in [0, 1, 0x7f12_3456_7000, u64::MAX] {
            let json = serde_json::to_string(&Hex(v)).unwrap();
            assert_eq!(json, format!("\"{v:#x}\""));
            assert_eq!(serde_json::from_str::<Hex>(&json).unwrap(), Hex(v));
        }
        assert_eq!(serde_json::from_str::<Hex>("34").unwrap(), Hex(34));
        assert_eq!(serde_json::from_str::<Hex>("\"34\"").unwrap(), Hex(34));
        assert_eq!(serde_json::from_str::<Hex>("-1").unwrap(), Hex(u64::MAX));
        assert!(serde_json::from_str::<Hex>("\"0xzz\"").is_err());
    }

    /// The recorded traces of tests/fixtures, of every age, read into the typed records;
    /// written back, an event or a mismatch is its line again (lines older than
    /// `--cgroup` have no `cgroup_id`, which reads as 0).
    #[test]
    fn recorded_traces_read_and_write_back() {
        use serde_json::Value;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let mut events = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "jsonl") {
                continue;
            }
            for (i, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
                let at = format!("{}:{}", path.display(), i + 1);
                let value: Value = serde_json::from_str(line).unwrap();
                let back = match value["type"].as_str() {
                    Some(EventRecord::TYPE) => {
                        let record = EventRecord::deserialize(&value).expect(&at);
                        assert_ne!(record.body, Body::Unknown, "{at}");
                        events += 1;
                        serde_json::to_string(&Tagged::new(&record)).unwrap()
                    }
                    Some(MismatchRecord::TYPE) => {
                        let record = MismatchRecord::deserialize(&value).expect(&at);
                        serde_json::to_string(&Tagged::new(&record)).unwrap()
                    }
                    Some(SummaryRecord::TYPE) => {
                        let record = SummaryRecord::deserialize(&value).expect(&at);
                        assert!(!record.events.0.is_empty() && !record.ended.is_empty());
                        continue;
                    }
                    _ => continue,
                };
                if value.get("cgroup_id").is_some() || value["type"] != "event" {
                    assert_eq!(back, line, "{at}");
                } else {
                    let mut back: Value = serde_json::from_str(&back).unwrap();
                    back.as_object_mut().unwrap().shift_remove("cgroup_id");
                    assert_eq!(back, value, "{at}");
                }
            }
        }
        assert!(events > 100, "{events} events in {}", dir.display());
    }

    #[test]
    fn names_keep_their_bytes() {
        assert_eq!(text_and_hex(b"libc.so.6"), ("libc.so.6".into(), None));
        let (text, hex) = text_and_hex(b"/tmp/\xff\xfe-bin");
        assert_eq!(text, "/tmp/\u{fffd}\u{fffd}-bin");
        assert_eq!(hex.as_deref(), Some("2f746d702ffffe2d62696e"));
        assert_eq!(&*exact_bytes(&text, hex.as_deref()), b"/tmp/\xff\xfe-bin");
        assert_eq!(&*exact_bytes("plain", None), b"plain");
    }
}
