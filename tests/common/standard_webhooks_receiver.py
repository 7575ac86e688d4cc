"""A webhook receiver that verifies deliveries with the `standardwebhooks` library.

Started by tests/notices.rs. It binds 127.0.0.1 on a free port, prints `PORT <n>` on stdout,
then one JSON line per request it receives. Each `--secret LABEL=SECRET` is one receiver's
configuration: the SECRET string is handed as it is to `standardwebhooks.Webhook(SECRET)`, and
the request is checked with nothing but `Webhook(SECRET).verify(body, headers)`, as a receiver
following the library's documentation would. The line says, per label, whether verify accepted
the request; the answer is 204 when every secret accepted it, else 401.

It exits when its stdin closes, so it never outlives the test that started it.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook


def make_handler(verifiers):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            headers = {name: value for name, value in self.headers.items()}
            results = {}
            for label, webhook in verifiers.items():
                try:
                    webhook.verify(body, headers)
                    results[label] = "accepted"
                except Exception as err:  # the library raises its own error types
                    results[label] = f"rejected: {type(err).__name__}: {err}"
            record = {
                "path": self.path,
                "headers": {name.lower(): value for name, value in headers.items()},
                "body": body.decode("utf-8", errors="replace"),
                "results": results,
            }
            print(json.dumps(record), flush=True)
            accepted = all(result == "accepted" for result in results.values())
            self.send_response(204 if accepted else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args):
            # Requests are reported on stdout as JSON; keep stderr quiet.
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", action="append", default=[], metavar="LABEL=SECRET")
    args = parser.parse_args()
    verifiers = {}
    for item in args.secret:
        label, _, secret = item.partition("=")
        verifiers[label] = Webhook(secret)
    if not verifiers:
        parser.error("give at least one --secret LABEL=SECRET")
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(verifiers))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"PORT {server.server_address[1]}", flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
