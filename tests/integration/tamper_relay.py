#!/usr/bin/env python3
"""tamper_relay.py PORT TARGET_URL [--flip-at N]

An HTTP relay on 127.0.0.1:PORT that forwards every request to TARGET_URL
(method, path, Range and other headers) and streams the answer back, with
the byte at body offset N flipped (default 100000) in every answer to a
path under /api/chunks/ or /files/: a mirror serving tampered bytes, for
tests of what a device does with them. Prints "ready" when it listens."""
import http.client
import http.server
import socketserver
import sys
import urllib.parse

port, target = int(sys.argv[1]), urllib.parse.urlparse(sys.argv[2])
flip_at = int(sys.argv[sys.argv.index("--flip-at") + 1]) if "--flip-at" in sys.argv else 100000
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


class Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        up = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        up.request("GET", self.path, headers=hdrs)
        r = up.getresponse()
        tamper = "/api/chunks/" in self.path or "/files/" in self.path
        start = 0
        cr = r.getheader("Content-Range")
        if cr and cr.startswith("bytes "):
            start = int(cr[6:].split("-")[0])
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        off = start
        while True:
            b = r.read(65536)
            if not b:
                break
            if tamper and off <= flip_at < off + len(b):
                i = flip_at - off
                b = b[:i] + bytes([b[i] ^ 0xFF]) + b[i + 1:]
            off += len(b)
            self.wfile.write(b)
        up.close()
        self.close_connection = True


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


s = Server(("127.0.0.1", port), Relay)
print("ready", flush=True)
s.serve_forever()
