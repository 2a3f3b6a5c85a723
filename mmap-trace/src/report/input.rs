//! Reading a `mmap-trace trace --json` file into typed records. Unknown record types and
//! unknown probes are counted, not fatal: a newer trace still gets a report.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, bail};
use serde_json::{Map, Value};

/// A VMA as the kernel probes report it (`remap_pfn_range`'s `vma`, `driver_mmap`'s
/// `before`/`after`).
#[derive(Clone, Debug, PartialEq)]
pub struct VmaInfo {
    pub start: u64,
    pub end: u64,
    pub flags_raw: u64,
    pub file: Option<String>,
}

/// The mapping `trace --faults` attributed a fault to (its model starts from maps, so it
/// knows what exec and the time before attaching mapped, which the report's does not).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FaultVma {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub name: String,
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
        /// The mapping trace's own model gave it (`vma`): the range, perms and name.
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

/// A `verify` mismatch record: at least a pid; an address when one of the usual fields
/// holds one.
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
    pub summary: Option<Map<String, Value>>,
    /// Records of types this report does not know, by type.
    pub unknown: BTreeMap<String, u64>,
}

impl Trace {
    /// `lost` per probe from the summary (only non-zero counts).
    pub fn lost(&self) -> Vec<(String, u64)> {
        let Some(Value::Object(lost)) = self.summary.as_ref().and_then(|s| s.get("lost")) else {
            return Vec::new();
        };
        lost.iter()
            .filter_map(|(probe, n)| n.as_u64().filter(|n| *n > 0).map(|n| (probe.clone(), n)))
            .collect()
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
        let Value::Object(obj) = value else {
            bail!("line {line} is not a JSON object: {}", excerpt(raw));
        };
        let record_type = obj.get("type").and_then(Value::as_str).unwrap_or("");
        match record_type {
            "event" => trace
                .events
                .push(event(line, &obj).with_context(|| format!("line {line}"))?),
            "summary" => trace.summary = Some(obj),
            "mismatch" => trace
                .mismatches
                .push(mismatch(line, &obj).with_context(|| format!("line {line}"))?),
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

/// The header fields every record carries, then the probe's own fields.
/// (`stack` is kept apart: [`Event::stack`].)
const HEADER: &[&str] = &["type", "ts_ns", "pid", "tid", "comm", "probe", "stack"];

fn event(line: usize, obj: &Map<String, Value>) -> Result<Event> {
    let probe = str_field(obj, "probe")?.to_string();
    let error = obj.get("error").and_then(Value::as_str).map(str::to_string);
    let ret_addr = || opt_u64(obj, "ret_addr");
    let call = match probe.as_str() {
        "mmap" => Call::Mmap {
            len: u64_field(obj, "len")?,
            prot: u64_field(obj, "prot_raw")?,
            flags: u64_field(obj, "flags_raw")?,
            // The full path when trace found one, else the kernel's name for the file.
            path: obj
                .get("path")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| file_name(obj.get("file"))),
            ret: ret_addr()?,
        },
        "munmap" => Call::Munmap {
            addr: u64_field(obj, "addr")?,
            len: u64_field(obj, "len")?,
        },
        "mprotect" => Call::Mprotect {
            addr: u64_field(obj, "addr")?,
            len: u64_field(obj, "len")?,
            prot: u64_field(obj, "prot_raw")?,
        },
        "mremap" => Call::Mremap {
            old_addr: u64_field(obj, "old_addr")?,
            old_len: u64_field(obj, "old_len")?,
            new_len: u64_field(obj, "new_len")?,
            flags: u64_field(obj, "flags_raw")?,
            ret: ret_addr()?,
        },
        "brk" => Call::Brk {
            addr: u64_field(obj, "addr")?,
            ret: u64_field(obj, "ret_addr")?,
        },
        "mmap_region" => Call::MmapRegion {
            len: u64_field(obj, "len")?,
            vm_flags: u64_field(obj, "vm_flags_raw")?,
            file: file_name(obj.get("file")),
            ret: ret_addr()?,
        },
        "remap_pfn_range" => Call::RemapPfnRange {
            vma: vma(obj, "vma")?,
            addr: u64_field(obj, "addr")?,
            pfn: u64_field(obj, "pfn")?,
            size: u64_field(obj, "size")?,
        },
        "driver_mmap" => Call::DriverMmap {
            after: vma(obj, "after")?,
        },
        "exec" => Call::Exec,
        "fault" => Call::Fault {
            addr: u64_field(obj, "addr")?,
            present: obj.get("present").and_then(Value::as_bool).unwrap_or(false),
            maj_flt: obj.get("maj_flt").and_then(Value::as_u64).unwrap_or(0),
            vma: match obj.get("vma") {
                Some(Value::Object(v)) => Some(FaultVma {
                    start: u64_field(v, "start")?,
                    end: u64_field(v, "end")?,
                    perms: v.get("perms").and_then(Value::as_str).unwrap_or("").into(),
                    name: v.get("name").and_then(Value::as_str).unwrap_or("").into(),
                }),
                _ => None,
            },
        },
        "rss" => Call::Rss {
            member: str_field(obj, "member")?.to_string(),
            bytes: obj.get("bytes").and_then(Value::as_i64).unwrap_or(0),
        },
        _ => Call::Other,
    };
    Ok(Event {
        line,
        ts_ns: u64_field(obj, "ts_ns")?,
        pid: u32_field(obj, "pid")?,
        tid: u32_field(obj, "tid").unwrap_or(0),
        comm: obj
            .get("comm")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        // Faults come by the hundred thousand and their hover shows none of it.
        detail: if matches!(call, Call::Fault { .. } | Call::Rss { .. }) {
            String::new()
        } else {
            detail(obj)
        },
        probe,
        call,
        error,
        stack: stack(obj),
    })
}

/// The `stack` array as text lines: the function where named, else the address; the
/// file and offset where known.
fn stack(obj: &Map<String, Value>) -> Vec<String> {
    let Some(frames) = obj.get("stack").and_then(Value::as_array) else {
        return Vec::new();
    };
    frames
        .iter()
        .map(|f| {
            let text = |key: &str| f.get(key).and_then(Value::as_str);
            let mut line = text("sym")
                .or_else(|| text("addr"))
                .unwrap_or("??")
                .to_string();
            if let (Some(file), Some(off)) = (text("file"), text("off")) {
                line.push_str(&format!(" ({file}+{off})"));
            }
            if let (Some(src), Some(n)) = (text("src"), f.get("line").and_then(Value::as_u64)) {
                line.push_str(&format!(" at {src}:{n}"));
            }
            line
        })
        .collect()
}

fn mismatch(line: usize, obj: &Map<String, Value>) -> Result<Mismatch> {
    let addr = ["start", "addr", "vma_start", "vm_start", "address"]
        .iter()
        .find_map(|key| obj.get(*key).and_then(number));
    let ts_ns = ["ts_ns", "after_ts_ns"]
        .iter()
        .find_map(|key| obj.get(*key).and_then(number));
    Ok(Mismatch {
        line,
        pid: u32_field(obj, "pid")?,
        ts_ns,
        addr,
        end: obj.get("end").and_then(number),
        detail: detail(obj),
    })
}

fn vma(obj: &Map<String, Value>, key: &str) -> Result<VmaInfo> {
    let Some(Value::Object(v)) = obj.get(key) else {
        bail!("{} event has no `{key}` object", str_field(obj, "probe")?);
    };
    Ok(VmaInfo {
        start: u64_field(v, "start")?,
        end: u64_field(v, "end")?,
        flags_raw: u64_field(v, "flags_raw")?,
        file: file_name(v.get("file")),
    })
}

fn file_name(file: Option<&Value>) -> Option<String> {
    file?
        .get("name")?
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// A JSON number or a `"0x…"` (or decimal) string.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_i64().map(|i| i as u64)),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

fn opt_u64(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    obj.get(key).map(|_| u64_field(obj, key)).transpose()
}

fn u64_field(obj: &Map<String, Value>, key: &str) -> Result<u64> {
    match obj.get(key) {
        Some(v) => {
            number(v).with_context(|| format!("`{key}` is not a number or \"0x…\" string: {v}"))
        }
        None => bail!("{} record has no `{key}`", record_name(obj)),
    }
}

fn u32_field(obj: &Map<String, Value>, key: &str) -> Result<u32> {
    let n = u64_field(obj, key)?;
    u32::try_from(n).with_context(|| format!("`{key}` {n} is out of range"))
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str> {
    obj.get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("{} record has no `{key}` string", record_name(obj)))
}

fn record_name(obj: &Map<String, Value>) -> String {
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("a");
    match obj.get("probe").and_then(Value::as_str) {
        Some(probe) => format!("{kind} ({probe})"),
        None => kind.to_string(),
    }
}

/// `key=value …` of everything but the header, nested objects as `outer.inner=…`;
/// raw flag words are left out where the decoded names are present.
fn detail(obj: &Map<String, Value>) -> String {
    fn walk(prefix: &str, map: &Map<String, Value>, out: &mut Vec<String>) {
        for (key, value) in map {
            if prefix.is_empty() && HEADER.contains(&key.as_str()) {
                continue;
            }
            if let Some(base) = key.strip_suffix("_raw")
                && map.contains_key(base)
            {
                continue;
            }
            match value {
                Value::Object(inner) => walk(&format!("{prefix}{key}."), inner, out),
                Value::String(s) => out.push(format!("{prefix}{key}={s}")),
                other => out.push(format!("{prefix}{key}={other}")),
            }
        }
    }
    let mut out = Vec::new();
    walk("", obj, &mut out);
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

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
                r#"{{"type":"event","ts_ns":5,"pid":7,"tid":7,"comm":"ls","probe":"mmap","addr":"0x0","len":"0x1000","prot_raw":1,"flags_raw":2,"fd":3,"offset":"0x0"{extra},"ret_addr":"0x7f0000000000"}}"#
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
                    start: 0x5555_8f4c_8000,
                    end: 0x5555_8f4e_9000,
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
        assert!(e.contains("line 1") && e.contains("no `len`"), "{e}");
    }
}
