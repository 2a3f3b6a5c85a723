"""A small OTLP/HTTP receiver for the agent's test: decodes each request with the
official opentelemetry-proto classes (PyPI `opentelemetry-proto`) and writes it, as
JSON (protobuf's own MessageToDict), one line per request, to OUT.

Usage: otlp_receiver.py OUT [--fail-first N]
Prints `listening PORT` on stdout once bound (127.0.0.1, a free port). With
--fail-first N the first N requests get 503 (the exporter must retry them).
A request that does not decode is answered 400 and recorded as {"error": ...}: the
test fails on it.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

OUT = sys.argv[1]
FAIL_FIRST = int(sys.argv[sys.argv.index("--fail-first") + 1]) if "--fail-first" in sys.argv else 0
SERVICES = {
    "/v1/metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "/v1/logs": (
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
    ),
}
seen = 0


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        global seen
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        seen += 1
        if seen <= FAIL_FIRST:
            self.record({"path": self.path, "refused": seen})
            self.reply(503, b"")
            return
        service = SERVICES.get(self.path)
        if service is None:
            self.record({"path": self.path, "error": "unknown path"})
            self.reply(404, b"")
            return
        request, response = service
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self.record({"path": self.path, "error": "content type " + str(self.headers.get("Content-Type"))})
            self.reply(415, b"")
            return
        message = request()
        try:
            message.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - any decoding failure is the test's failure
            self.record({"path": self.path, "error": repr(e)})
            self.reply(400, b"")
            return
        self.record({"path": self.path, "request": MessageToDict(message)})
        self.reply(200, response().SerializeToString())

    def record(self, line):
        with open(OUT, "a") as f:
            f.write(json.dumps(line) + "\n")

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
