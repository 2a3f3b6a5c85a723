//! `report --perfetto OUT`: the timeline as a Perfetto trace (protobuf), for
//! ui.perfetto.dev. Per process: a process track; under it, lanes of slices, one slice
//! per VMA interval of the model (a lane never holds two overlapping slices, which
//! Perfetto's slice tracks require); and a counter track of the mapped bytes (the sum
//! of the live intervals) at every change.
//!
//! Only the messages written are defined here, with perfetto's field numbers
//! (protos/perfetto/trace/trace.proto, trace_packet.proto, track_event/track_descriptor.proto,
//! process_descriptor.proto, counter_descriptor.proto, debug_annotation.proto,
//! track_event.proto). The test decodes the file with perfetto's own generated
//! classes (PyPI `perfetto`), so a wrong number shows there.

use std::collections::BTreeMap;

use prost::Message;

use super::{
    input::Trace,
    model::{Process, Vma, prot_string},
};

#[derive(Clone, PartialEq, Message)]
pub struct PerfettoTrace {
    #[prost(message, repeated, tag = "1")]
    pub packet: Vec<TracePacket>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TracePacket {
    #[prost(uint64, optional, tag = "8")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "10")]
    pub trusted_packet_sequence_id: Option<u32>,
    #[prost(message, optional, tag = "11")]
    pub track_event: Option<TrackEvent>,
    #[prost(uint32, optional, tag = "13")]
    pub sequence_flags: Option<u32>,
    #[prost(message, optional, tag = "60")]
    pub track_descriptor: Option<TrackDescriptor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrackDescriptor {
    #[prost(uint64, optional, tag = "1")]
    pub uuid: Option<u64>,
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    #[prost(message, optional, tag = "3")]
    pub process: Option<ProcessDescriptor>,
    #[prost(uint64, optional, tag = "5")]
    pub parent_uuid: Option<u64>,
    #[prost(message, optional, tag = "8")]
    pub counter: Option<CounterDescriptor>,
    #[prost(int32, optional, tag = "12")]
    pub sibling_order_rank: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProcessDescriptor {
    #[prost(int32, optional, tag = "1")]
    pub pid: Option<i32>,
    #[prost(string, optional, tag = "6")]
    pub process_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CounterDescriptor {
    /// `CounterDescriptor.Unit`: 3 is UNIT_SIZE_BYTES.
    #[prost(int32, optional, tag = "3")]
    pub unit: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrackEvent {
    #[prost(message, repeated, tag = "4")]
    pub debug_annotations: Vec<DebugAnnotation>,
    /// `TrackEvent.Type`: 1 slice begin, 2 slice end, 4 counter.
    #[prost(int32, optional, tag = "9")]
    pub r#type: Option<i32>,
    #[prost(uint64, optional, tag = "11")]
    pub track_uuid: Option<u64>,
    #[prost(string, repeated, tag = "22")]
    pub categories: Vec<String>,
    #[prost(string, optional, tag = "23")]
    pub name: Option<String>,
    #[prost(int64, optional, tag = "30")]
    pub counter_value: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DebugAnnotation {
    #[prost(uint64, optional, tag = "3")]
    pub uint_value: Option<u64>,
    #[prost(string, optional, tag = "6")]
    pub string_value: Option<String>,
    #[prost(string, optional, tag = "10")]
    pub name: Option<String>,
}

const TYPE_SLICE_BEGIN: i32 = 1;
const TYPE_SLICE_END: i32 = 2;
const TYPE_COUNTER: i32 = 4;
const UNIT_SIZE_BYTES: i32 = 3;
const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;
/// Every packet is on one writer sequence.
const SEQUENCE: u32 = 1;

/// What `render` wrote, for the command's one-line note.
pub struct Written {
    pub bytes: Vec<u8>,
    pub slices: usize,
    pub lanes: usize,
}

pub fn render(trace: &Trace, processes: &[Process]) -> Written {
    // Intervals still mapped at the end close where the trace ends.
    let trace_end = trace.events.iter().map(|e| e.ts_ns).max().unwrap_or(0);
    let mut packets = Vec::new();
    // (ts, order, event): at one timestamp, ends first (a lane can end one slice and
    // begin the next), then counters, begins, and last the ends of zero-length slices.
    let mut timed: Vec<(u64, u8, TrackEvent)> = Vec::new();
    let mut next_uuid = 1u64;
    let mut uuid = || {
        next_uuid += 1;
        next_uuid
    };
    let mut slices = 0;
    let mut lanes_total = 0;
    for p in processes {
        let process_uuid = uuid();
        packets.push(descriptor(TrackDescriptor {
            uuid: Some(process_uuid),
            process: Some(ProcessDescriptor {
                pid: Some(p.pid as i32),
                process_name: Some(p.comm.clone()),
            }),
            ..Default::default()
        }));
        let counter_uuid = uuid();
        packets.push(descriptor(TrackDescriptor {
            uuid: Some(counter_uuid),
            name: Some("mapped bytes".into()),
            parent_uuid: Some(process_uuid),
            counter: Some(CounterDescriptor {
                unit: Some(UNIT_SIZE_BYTES),
            }),
            sibling_order_rank: Some(0),
            ..Default::default()
        }));
        for (ts, value) in mapped_bytes(&p.vmas) {
            let event = TrackEvent {
                r#type: Some(TYPE_COUNTER),
                track_uuid: Some(counter_uuid),
                counter_value: Some(value as i64),
                ..Default::default()
            };
            timed.push((ts, 1, event));
        }
        let lanes = lanes(&p.vmas, trace_end);
        let lane_uuids: Vec<u64> = (0..lanes.iter().max().map_or(0, |l| l + 1))
            .map(|_| uuid())
            .collect();
        for (i, &lane_uuid) in lane_uuids.iter().enumerate() {
            packets.push(descriptor(TrackDescriptor {
                uuid: Some(lane_uuid),
                name: Some(format!("VMAs {}", i + 1)),
                parent_uuid: Some(process_uuid),
                sibling_order_rank: Some(i as i32 + 1),
                ..Default::default()
            }));
        }
        lanes_total += lane_uuids.len();
        for (vma, lane) in p.vmas.iter().zip(&lanes) {
            let track = lane_uuids[*lane];
            let begin = TrackEvent {
                r#type: Some(TYPE_SLICE_BEGIN),
                track_uuid: Some(track),
                name: Some(slice_name(vma)),
                categories: vec![vma.attrs.kind.name().to_string()],
                debug_annotations: annotations(vma),
                ..Default::default()
            };
            let end = TrackEvent {
                r#type: Some(TYPE_SLICE_END),
                track_uuid: Some(track),
                ..Default::default()
            };
            let t_end = vma.t_end.unwrap_or(trace_end).max(vma.t_start);
            timed.push((vma.t_start, 2, begin));
            timed.push((t_end, if t_end == vma.t_start { 3 } else { 0 }, end));
            slices += 1;
        }
    }
    timed.sort_by_key(|(ts, order, _)| (*ts, *order));
    packets.extend(timed.into_iter().map(|(ts, _, event)| TracePacket {
        timestamp: Some(ts),
        trusted_packet_sequence_id: Some(SEQUENCE),
        track_event: Some(event),
        ..Default::default()
    }));
    if let Some(first) = packets.first_mut() {
        first.sequence_flags = Some(SEQ_INCREMENTAL_STATE_CLEARED);
    }
    Written {
        bytes: PerfettoTrace { packet: packets }.encode_to_vec(),
        slices,
        lanes: lanes_total,
    }
}

fn descriptor(track: TrackDescriptor) -> TracePacket {
    TracePacket {
        trusted_packet_sequence_id: Some(SEQUENCE),
        track_descriptor: Some(track),
        ..Default::default()
    }
}

/// `r-x libc.so.6`, `rw- anon`.
fn slice_name(vma: &Vma) -> String {
    let what = vma.attrs.file.as_deref().unwrap_or(vma.attrs.kind.name());
    format!("{} {what}", prot_string(vma.attrs.prot))
}

fn annotations(vma: &Vma) -> Vec<DebugAnnotation> {
    let text = |name: &str, value: String| DebugAnnotation {
        name: Some(name.into()),
        string_value: Some(value),
        ..Default::default()
    };
    let mut list = vec![
        text("start", format!("{:#x}", vma.start)),
        text("end", format!("{:#x}", vma.end)),
        DebugAnnotation {
            name: Some("len".into()),
            uint_value: Some(vma.len()),
            ..Default::default()
        },
        text("kind", vma.attrs.kind.name().into()),
        text("prot", prot_string(vma.attrs.prot)),
    ];
    if let Some(file) = &vma.attrs.file {
        list.push(text("file", file.clone()));
    }
    if let Some(flags) = vma.attrs.vm_flags {
        list.push(text("vm_flags", format!("{flags:#x}")));
    }
    list
}

/// The lane of each interval: the first lane free at its start (greedy, by start time).
fn lanes(vmas: &[Vma], trace_end: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..vmas.len()).collect();
    order.sort_by_key(|&i| (vmas[i].t_start, i));
    let mut lane_free_at: Vec<u64> = Vec::new();
    let mut lane_of = vec![0; vmas.len()];
    for i in order {
        let v = &vmas[i];
        let end = v.t_end.unwrap_or(trace_end).max(v.t_start);
        let lane = match lane_free_at.iter().position(|&free| free <= v.t_start) {
            Some(lane) => lane,
            None => {
                lane_free_at.push(0);
                lane_free_at.len() - 1
            }
        };
        // A zero-length interval still occupies its instant.
        lane_free_at[lane] = if end == v.t_start { end + 1 } else { end };
        lane_of[i] = lane;
    }
    lane_of
}

/// `(ts, bytes mapped after every change at ts)`: the sum of the live intervals' lengths.
fn mapped_bytes(vmas: &[Vma]) -> Vec<(u64, u64)> {
    let mut delta: BTreeMap<u64, i128> = BTreeMap::new();
    for v in vmas {
        *delta.entry(v.t_start).or_default() += i128::from(v.len());
        if let Some(end) = v.t_end {
            *delta.entry(end).or_default() -= i128::from(v.len());
        }
    }
    let mut live: i128 = 0;
    delta
        .into_iter()
        .map(|(ts, d)| {
            live += d;
            (ts, live.max(0) as u64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::{Attrs, Kind};

    fn vma(t_start: u64, t_end: Option<u64>, len: u64) -> Vma {
        Vma {
            start: 0x1000,
            end: 0x1000 + len,
            t_start,
            t_end,
            attrs: Attrs::new(Kind::Anon, 3),
            touches: Vec::new(),
            elided: 0,
            faults: 0,
            faulted_in: 0,
            first_fault: None,
            major: 0,
        }
    }

    #[test]
    fn lanes_never_overlap_and_are_reused() {
        let vmas = [
            vma(0, Some(10), 4096),
            vma(5, Some(20), 4096),
            vma(10, None, 4096),
            vma(7, Some(7), 4096),
        ];
        let lanes = lanes(&vmas, 30);
        assert_eq!(lanes, vec![0, 1, 0, 2]);
    }

    #[test]
    fn mapped_bytes_follow_the_live_intervals() {
        let vmas = [
            vma(0, Some(10), 4096),
            vma(5, Some(20), 8192),
            vma(10, None, 4096),
        ];
        assert_eq!(
            mapped_bytes(&vmas),
            vec![(0, 4096), (5, 12288), (10, 12288), (20, 4096)]
        );
    }
}
