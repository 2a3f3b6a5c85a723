//! Reading a `mmap-trace trace --json` file: each line into the schema's typed record
//! (schema/), and from it what the report replays ([`Call`]). Unknown record types and
//! unknown probes are counted, not fatal: a newer trace still gets a report.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize as _;
use serde_json::Value;

pub use crate::schema::FaultVma;
use crate::schema::{
    self, Body, EventRecord, Frame, MismatchRecord, Record as _, SummaryRecord, details,
    details_line,
};

/// A VMA as the kernel probes report it (`remap_pfn_range`'s `vma`, `driver_mmap`'s
/// `before`/`after`): what the report's model needs of it.
#[derive(Clone, Debug, PartialEq)]
pub struct VmaInfo {
    pub start: u64,
    pub end: u64,
    pub flags_raw: u64,
    pub file: Option<String>,
}

/// What a traced call did; addresses are as traced (not page-aligned).
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    Mmap {
        len: u64,
        prot: u64,
        flags: u64,
        path: Option<String>,
        ret: Option<u64>,
    },
    Munmap {
        addr: u64,
        len: u64,
    },
    Mprotect {
        addr: u64,
        len: u64,
        prot: u64,
    },
    Mremap {
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        ret: Option<u64>,
    },
    Brk {
        addr: u64,
        ret: u64,
    },
    MmapRegion {
        len: u64,
        vm_flags: u64,
        file: Option<String>,
        ret: Option<u64>,
    },
    RemapPfnRange {
        vma: VmaInfo,
        addr: u64,
        pfn: u64,
        size: u64,
    },
    DriverMmap {
        after: VmaInfo,
    },
    Exec,
    /// A page fault (`trace --faults`): not replayed, attributed to the VMA it hit.
    Fault {
        addr: u64,
        /// The page was present (copy-on-write, protection): it did not become resident.
        present: bool,
        /// The thread's count of faults that needed I/O before this one.
        maj_flt: u64,
        /// The mapping trace's own model gave it (`vma`): the range, perms and name. Its
        /// model starts from maps, so it knows what exec and the time before attaching
        /// mapped, which the report's does not.
        vma: Option<FaultVma>,
    },
    /// A resident-set counter (`trace --faults`): `member` is anon, file, shmem or swap.
    Rss {
        member: String,
        bytes: i64,
    },
    /// A probe this report does not know; counted and shown, never replayed.
    Other,
}

#[derive(Clone, Debug)]
pub struct Event {
    /// 1-based line in the trace file.
    pub line: usize,
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub probe: String,
    pub call: Call,
    /// The errno name of a refused call.
    pub error: Option<String>,
    /// `key=value …` of the probe's own fields, as the trace wrote them.
    pub detail: String,
    /// `trace --stacks`: the user stack, innermost first, a line per frame
    /// (`name (file+0xoff)`); empty without.
    pub stack: Vec<String>,
}

impl Event {
    pub fn refused(&self) -> bool {
        self.error.is_some()
    }
}

/// A `verify` mismatch record: where and when verify found it, and what it says.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub line: usize,
    pub pid: u32,
    /// When it was found (`after_ts_ns`: the event after which verify compared).
    pub ts_ns: Option<u64>,
    pub addr: Option<u64>,
    pub end: Option<u64>,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Trace {
    pub events: Vec<Event>,
    pub mismatches: Vec<Mismatch>,
    /// The closing `summary` record, when the trace has one.
    pub summary: Option<SummaryRecord>,
    /// Records of types this report does not know, by type.
    pub unknown: BTreeMap<String, u64>,
}

impl Trace {
    /// `lost` per probe from the summary (only non-zero counts).
    pub fn lost(&self) -> Vec<(String, u64)> {
        let Some(summary) = &self.summary else {
            return Vec::new();
        };
        summary
            .lost
            .0
            .iter()
            .filter(|(_, n)| *n > 0)
            .cloned()
            .collect()
    }

    /// How the trace ended, as its summary says (None without one).
    pub fn ended(&self) -> Option<&str> {
        self.summary
            .as_ref()
            .map(|s| s.ended.as_str())
            .filter(|e| !e.is_empty())
    }
}

pub fn read(path: &Path) -> Result<Trace> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8_lossy(&text);
    parse(&text).with_context(|| format!("{}", path.display()))
}

pub fn parse(text: &str) -> Result<Trace> {
    let mut trace = Trace::default();
    let mut records = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        records += 1;
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| anyhow::anyhow!("line {line} is not JSON ({e}): {}", excerpt(raw)))?;
        if !value.is_object() {
            bail!("line {line} is not a JSON object: {}", excerpt(raw));
        }
        let record_type = value.get("type").and_then(Value::as_str).unwrap_or("");
        let context = || format!("line {line}: {} record", record_name(&value));
        match record_type {
            EventRecord::TYPE => trace
                .events
                .push(event(line, &value).with_context(context)?),
            SummaryRecord::TYPE => {
                trace.summary = Some(SummaryRecord::deserialize(&value).with_context(context)?);
            }
            MismatchRecord::TYPE => trace
                .mismatches
                .push(mismatch(line, &value).with_context(context)?),
            other => *trace.unknown.entry(other.to_string()).or_default() += 1,
        }
    }
    if records == 0 {
        bail!("the trace is empty: expected the JSON Lines of `mmap-trace trace --json`");
    }
    if trace.events.is_empty() && trace.mismatches.is_empty() {
        bail!("the trace has {records} record(s) but no events: nothing to report");
    }
    Ok(trace)
}

fn excerpt(line: &str) -> String {
    let cut: String = line.chars().take(60).collect();
    if cut.len() < line.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// `event (mmap)`, `mismatch`: which record a message is about.
fn record_name(value: &Value) -> String {
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("a");
    match value.get("probe").and_then(Value::as_str) {
        Some(probe) => format!("{kind} ({probe})"),
        None => kind.to_string(),
    }
}

/// The fields every record carries, left out of its `key=value` detail (`stack` has a
/// place of its own: [`Event::stack`]).
const HEADER: &[&str] = &["type", "ts_ns", "pid", "tid", "comm", "probe", "stack"];

/// A detail line as the trace wrote it (the report shows names as they are).
fn detail_of<T: serde::Serialize + ?Sized>(record: &T) -> String {
    details_line(&details(record, HEADER), |bytes| {
        String::from_utf8_lossy(bytes).into_owned()
    })
}

fn event(line: usize, value: &Value) -> Result<Event> {
    let record = EventRecord::deserialize(value)?;
    let probe = value
        .get("probe")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut error = None;
    let call = match &record.body {
        Body::Mmap(m) => {
            error.clone_from(&m.outcome.error);
            Call::Mmap {
                len: m.len.0,
                prot: m.prot_raw,
                flags: m.flags_raw,
                // The full path when trace found one, else the kernel's name for the file.
                path: m.path.path.clone().or_else(|| file_name(m.file.as_ref())),
                ret: m.outcome.ret_addr.map(|r| r.0),
            }
        }
        Body::Munmap(m) => {
            error.clone_from(&m.outcome.error);
            Call::Munmap {
                addr: m.addr.0,
                len: m.len.0,
            }
        }
        Body::Mprotect(m) => {
            error.clone_from(&m.outcome.error);
            Call::Mprotect {
                addr: m.addr.0,
                len: m.len.0,
                prot: m.prot_raw,
            }
        }
        Body::Mremap(m) => {
            error.clone_from(&m.outcome.error);
            Call::Mremap {
                old_addr: m.old_addr.0,
                old_len: m.old_len.0,
                new_len: m.new_len.0,
                flags: m.flags_raw,
                ret: m.outcome.ret_addr.map(|r| r.0),
            }
        }
        Body::Brk(b) => Call::Brk {
            addr: b.addr.0,
            ret: b.ret_addr.0,
        },
        Body::MmapRegion(m) => {
            error.clone_from(&m.outcome.error);
            Call::MmapRegion {
                len: m.len.0,
                vm_flags: m.vm_flags_raw.0,
                file: file_name(m.file.as_ref()),
                ret: m.outcome.ret_addr.map(|r| r.0),
            }
        }
        Body::RemapPfnRange(r) => Call::RemapPfnRange {
            vma: vma_info(&r.vma),
            addr: r.addr.0,
            pfn: r.pfn.0,
            size: r.size.0,
        },
        Body::DriverMmap(d) => {
            error.clone_from(&d.outcome.error);
            Call::DriverMmap {
                after: vma_info(&d.after),
            }
        }
        Body::Exec => Call::Exec,
        Body::Fault(f) => Call::Fault {
            addr: f.addr.0,
            present: f.present,
            maj_flt: f.maj_flt,
            vma: f.vma.clone(),
        },
        Body::Rss(r) => Call::Rss {
            member: r.member.clone(),
            bytes: r.bytes,
        },
        _ => Call::Other,
    };
    let detail = match (&call, &record.body) {
        // Faults come by the hundred thousand and their hover shows none of it.
        (Call::Fault { .. } | Call::Rss { .. }, _) => String::new(),
        // A probe newer than the schema: its fields as the line has them.
        (_, Body::Unknown) => detail_of(value),
        _ => detail_of(&record),
    };
    Ok(Event {
        line,
        ts_ns: record.ts_ns,
        pid: record.pid,
        tid: record.tid,
        comm: record.comm.into_owned(),
        probe,
        call,
        error,
        detail,
        stack: stack(record.stack.as_deref().unwrap_or_default()),
    })
}

/// The `stack` array as text lines: the function where named, else the address; the
/// file and offset where known.
fn stack(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            let mut line = match &f.sym {
                Some(sym) => sym.clone(),
                None => format!("{:#x}", f.addr),
            };
            if let (Some(file), Some(off)) = (&f.file, f.off) {
                line.push_str(&format!(" ({file}+{off:#x})"));
            }
            if let (Some(src), Some(n)) = (&f.src, f.line) {
                line.push_str(&format!(" at {src}:{n}"));
            }
            line
        })
        .collect()
}

fn mismatch(line: usize, value: &Value) -> Result<Mismatch> {
    let record = MismatchRecord::deserialize(value)?;
    Ok(Mismatch {
        line,
        pid: record.pid,
        ts_ns: Some(record.after_ts_ns),
        addr: Some(record.start.0),
        end: Some(record.end.0),
        detail: detail_of(&record),
    })
}

fn vma_info(vma: &schema::Vma) -> VmaInfo {
    VmaInfo {
        start: vma.start.0,
        end: vma.end.0,
        flags_raw: vma.flags_raw.0,
        file: file_name(vma.file.as_ref()),
    }
}

/// The kernel's name for a file, when it has one.
fn file_name(file: Option<&schema::File>) -> Option<String> {
    file.map(|f| f.name.clone()).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Hex;

    #[test]
    fn reads_every_probe_and_counts_unknown_records() {
        let text = r#"{"type":"event","ts_ns":5,"pid":7,"tid":8,"comm":"w","probe":"mmap","addr":"0x0","len":"0x4000","prot":"READ|WRITE","prot_raw":3,"flags":"PRIVATE|ANONYMOUS","flags_raw":34,"fd":-1,"offset":"0x0","ret_addr":"0x7f0000000000"}
{"type":"event","ts_ns":6,"pid":7,"tid":8,"comm":"w","probe":"munmap","addr":"0x1","len":"0x1000","ret":-22,"error":"EINVAL"}

{"type":"event","ts_ns":7,"pid":7,"tid":8,"comm":"w","probe":"remap_pfn_range","vma":{"vma":"0xffff","start":"0x1000","end":"0x3000","flags":"READ","flags_raw":"0x1","pgoff":"0x0"},"addr":"0x1000","pfn":"0x1234","size":"0x2000","prot":"0x8000000000000025"}
{"type":"event","ts_ns":8,"pid":7,"tid":8,"comm":"w","probe":"brand_new","x":1}
{"type":"mismatch","pid":7,"checkpoint":1,"after_probe":"mprotect","after_ts_ns":7,"start":"0x1000","end":"0x3000","field":"perms","expected":"r--p","found":"rw-p"}
{"type":"later","pid":7}
{"type":"summary","events":{"mmap":1},"lost":{"mmap":0,"munmap":3},"ended":"command exited (status 0)"}
"#;
        let trace = parse(text).unwrap();
        assert_eq!(trace.events.len(), 4);
        let mmap = &trace.events[0];
        assert_eq!(
            mmap.call,
            Call::Mmap {
                len: 0x4000,
                prot: 3,
                flags: 34,
                path: None,
                ret: Some(0x7f00_0000_0000)
            }
        );
        assert!(
            mmap.detail
                .starts_with("addr=0x0 len=0x4000 prot=READ|WRITE flags="),
            "{}",
            mmap.detail
        );
        assert!(!mmap.detail.contains("prot_raw"));
        assert_eq!(trace.events[1].error.as_deref(), Some("EINVAL"));
        assert_eq!(trace.events[1].line, 2);
        assert_eq!(trace.events[2].line, 4);
        assert!(trace.events[2].detail.contains("pfn=0x1234"));
        assert_eq!(trace.events[3].call, Call::Other);
        let m = &trace.mismatches[0];
        assert_eq!(
            (m.addr, m.end, m.ts_ns, m.line),
            (Some(0x1000), Some(0x3000), Some(7), 6)
        );
        assert!(
            m.detail.contains("expected=r--p found=rw-p"),
            "{}",
            m.detail
        );
        assert_eq!(trace.unknown.get("later"), Some(&1));
        assert_eq!(trace.lost(), vec![("munmap".to_string(), 3)]);
    }

    /// A file mmap read after its process exited has no path: the kernel's name stands in.
    #[test]
    fn a_file_mmap_without_a_path_is_named_by_its_file() {
        let line = |extra: &str| {
            format!(
                r#"{{"type":"event","ts_ns":5,"pid":7,"tid":7,"comm":"ls","probe":"mmap","addr":"0x0","len":"0x1000","prot":"READ","prot_raw":1,"flags":"PRIVATE","flags_raw":2,"fd":3,"offset":"0x0"{extra},"ret_addr":"0x7f0000000000"}}"#
            )
        };
        let path_of = |extra: &str| match parse(&line(extra)).unwrap().events[0].call.clone() {
            Call::Mmap { path, .. } => path,
            other => panic!("{other:?}"),
        };
        let file = r#","file":{"dev":"fe:00","ino":9,"name":"libc.so.6"}"#;
        assert_eq!(path_of(file).as_deref(), Some("libc.so.6"));
        assert_eq!(
            path_of(&format!("{file},\"path\":\"/usr/lib/libc.so.6\"")).as_deref(),
            Some("/usr/lib/libc.so.6")
        );
        assert_eq!(
            path_of(r#","file":{"dev":"fe:00","ino":9,"name":""}"#),
            None
        );
        assert_eq!(path_of(""), None);
    }

    /// `trace --faults` records, as trace writes them (one line each, from a real run).
    #[test]
    fn reads_faults_and_resident_records() {
        let text = r#"{"type":"event","ts_ns":1573892226346,"pid":23445,"tid":23445,"comm":"mmap-workload","probe":"fault","addr":"0x55558f4ca078","ip":"0x7f85ab49281f","access":"write","present":false,"in_kernel":false,"error_code":"0x6","maj_flt":0,"vma":{"start":"0x55558f4c8000","end":"0x55558f4e9000","perms":"rw-p","name":"[heap]"},"cgroup_id":1,"cgroup":"/"}
{"type":"event","ts_ns":1573892197853,"pid":23445,"tid":23445,"comm":"mmap-workload","probe":"rss","member":"anon","bytes":41418752,"cgroup_id":1,"cgroup":"/"}
"#;
        let trace = parse(text).unwrap();
        assert_eq!(
            trace.events[0].call,
            Call::Fault {
                addr: 0x5555_8f4c_a078,
                present: false,
                maj_flt: 0,
                vma: Some(FaultVma {
                    start: Hex(0x5555_8f4c_8000),
                    end: Hex(0x5555_8f4e_9000),
                    perms: "rw-p".into(),
                    name: "[heap]".into()
                })
            }
        );
        assert_eq!(
            trace.events[1].call,
            Call::Rss {
                member: "anon".into(),
                bytes: 41_418_752
            }
        );
        assert!(
            trace.events[0].detail.is_empty(),
            "faults carry no hover text"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let bad = "{\"type\":\"summary\"}\nnot json at all\n";
        let e = format!("{:#}", parse(bad).unwrap_err());
        assert!(e.contains("line 2 is not JSON"), "{e}");
        let e = format!("{:#}", parse("\n\n").unwrap_err());
        assert!(e.contains("empty"), "{e}");
        let e = format!("{:#}", parse("{\"type\":\"summary\"}\n").unwrap_err());
        assert!(e.contains("no events"), "{e}");
        let e = format!(
            "{:#}",
            parse("{\"type\":\"event\",\"ts_ns\":1,\"pid\":1,\"probe\":\"mmap\"}\n").unwrap_err()
        );
        assert!(
            e.contains("line 1") && e.contains("missing field `addr`"),
            "{e}"
        );
    }
}
