"""Decodes a Perfetto trace with perfetto's own generated protobuf classes (PyPI
`perfetto`) and prints what tests/tests/report.rs checks, as one JSON object.

Usage: perfetto_decode.py TRACE. Field numbers or types that perfetto does not define
show up as unknown fields (listed) or make the parse fail."""

import json
import sys

from google.protobuf import unknown_fields
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb


def unknown(msg, path, out):
    """Every field of msg (recursively) that perfetto's schema does not know."""
    for field in unknown_fields.UnknownFieldSet(msg):
        out.append(f"{path}#{field.field_number}")
    for desc, value in msg.ListFields():
        if desc.message_type is None:
            continue
        items = value if desc.is_repeated else [value]
        for i, item in enumerate(items):
            unknown(item, f"{path}.{desc.name}[{i}]", out)


def main():
    trace = pb.Trace()
    with open(sys.argv[1], "rb") as f:
        trace.ParseFromString(f.read())
    result = {"unknown_fields": [], "tracks": [], "events": []}
    unknown(trace, "trace", result["unknown_fields"])
    for packet in trace.packet:
        if packet.HasField("track_descriptor"):
            d = packet.track_descriptor
            track = {"uuid": d.uuid, "name": d.name}
            if d.HasField("parent_uuid"):
                track["parent"] = d.parent_uuid
            if d.HasField("process"):
                track["pid"] = d.process.pid
                track["process_name"] = d.process.process_name
            if d.HasField("counter"):
                track["counter_unit"] = pb.CounterDescriptor.Unit.Name(d.counter.unit)
            result["tracks"].append(track)
        elif packet.HasField("track_event"):
            e = packet.track_event
            event = {
                "ts": packet.timestamp,
                "type": pb.TrackEvent.Type.Name(e.type),
                "track": e.track_uuid,
            }
            if e.HasField("name"):
                event["name"] = e.name
            if e.HasField("counter_value"):
                event["value"] = e.counter_value
            if e.debug_annotations:
                event["args"] = {
                    a.name: (a.string_value if a.HasField("string_value") else a.uint_value)
                    for a in e.debug_annotations
                }
            result["events"].append(event)
        else:
            result["unknown_fields"].append("packet without a track descriptor or event")
    json.dump(result, sys.stdout)


main()
