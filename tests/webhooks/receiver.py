"""A webhook receiver as a customer would write one: it verifies every delivery with the
`standardwebhooks` library (PyPI), answers 204 to a good one and 400 to a bad signature, and
appends what it saw to a JSON-lines log for the test to read.

Usage: receiver.py --secret whsec_... --log FILE --port-file FILE [--port N] [--fail-first]
  --port N       listen on N (default 0: a port the system picks)
  --fail-first   answer 500 to the first delivery of each webhook id (the sender must retry)
The port it listens on (127.0.0.1, chosen by the system) is written to --port-file once serving.
"""

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

args = argparse.ArgumentParser()
args.add_argument("--secret", required=True)
args.add_argument("--log", required=True)
args.add_argument("--port-file", required=True)
args.add_argument("--port", type=int, default=0)
args.add_argument("--fail-first", action="store_true")
opts = args.parse_args()

verifier = Webhook(opts.secret)
lock = threading.Lock()
seen = set()


def record(entry):
    with lock, open(opts.log, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = verifier.verify(raw, headers)
        except WebhookVerificationError as e:
            record({"invalid": str(e), "headers": headers})
            self.send_response(400)
            self.end_headers()
            return
        wid = headers.get("webhook-id")
        with lock:
            first = wid not in seen
            seen.add(wid)
        fail = opts.fail_first and first
        record({"webhookId": wid, "timestamp": headers.get("webhook-timestamp"), "event": event, "answered": 500 if fail else 204})
        self.send_response(500 if fail else 204)
        self.end_headers()

    def log_message(self, *a):
        pass


ThreadingHTTPServer.allow_reuse_address = True
server = ThreadingHTTPServer(("127.0.0.1", opts.port), Handler)
with open(opts.port_file + ".tmp", "w", encoding="utf-8") as f:
    f.write(str(server.server_address[1]))
os.replace(opts.port_file + ".tmp", opts.port_file)
server.serve_forever()
