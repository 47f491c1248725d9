#!/usr/bin/python3
"""Slow clients against keeld (47-slowloris.sh).

usage: slowloris.py PORT HEADER_TIMEOUT_S

keeld runs with max_connections 64, connection_reserve 8 and
max_connections_per_ip 16. The attack, all on Linux loopback addresses:
 - from 127.0.0.5 (an address like a remote client's): 40 connections that
   send a request line and then a header line a second, never ending their
   headers (slowloris): 16 get in;
 - from 127.0.0.4 one that sends its headers whole, then its body at 10
   bytes a second;
 - from 127.0.0.1 (local: no per-address bound, the reserve) 100 more
   slowloris connections: they fill the server, 55 get in.
Meanwhile /healthz from 127.0.0.1 and from 127.0.0.2 in turn, twice a
second, must answer 200 within 2 s (a full server makes room by closing
the connection that has waited longest for its headers), and a client that
takes 1.5 s over its headers (slow, within header_timeout) must be served.
Then every slow connection keeld let in must have been closed by it after
about HEADER_TIMEOUT_S (not before, not long after), the slow body too.
Prints one summary line; exits 1 with the reasons on a failure."""
import socket
import sys
import time

port, header_timeout = int(sys.argv[1]), float(sys.argv[2])
fails = []


def fail(msg):
    fails.append(msg)


def health(src):
    """GET /healthz from address src: (status line or error, seconds)."""
    t0 = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(src, 0))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: keel\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
        s.close()
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
    except OSError as e:
        line = "error: %s" % e
    return line, time.monotonic() - t0


class Slow:
    def __init__(self, src, body=False):
        self.src = src
        self.opened = time.monotonic()
        self.closed = None  # when keeld closed it
        self.s = socket.create_connection(("127.0.0.1", port), timeout=2,
                                          source_address=(src, 0))
        self.s.setblocking(False)
        if body:
            self.send(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: keel\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        else:
            self.send(b"GET /healthz HTTP/1.1\r\nHost: keel\r\n")

    def send(self, data):
        if self.closed:
            return
        try:
            self.s.send(data)
        except BlockingIOError:
            pass
        except OSError:
            self.mark_closed()

    def poll(self):
        """Notices a close by keeld (EOF or reset)."""
        if self.closed:
            return
        try:
            if self.s.recv(4096) == b"":
                self.mark_closed()
        except BlockingIOError:
            pass
        except OSError:
            self.mark_closed()

    def mark_closed(self):
        self.closed = time.monotonic()
        self.s.close()


def attack(src, n):
    out = []
    for i in range(n):
        try:
            out.append(Slow(src))
        except OSError as e:  # refused at once is fine; a hang is not
            fail("slow connection %d from %s: connect: %s" % (i, src, e))
    return out


remote = attack("127.0.0.5", 40)
body = Slow("127.0.0.4", body=True)
time.sleep(0.2)
local = attack("127.0.0.1", 100)
time.sleep(0.3)
for c in remote + local + [body]:
    c.poll()
let_in = {"remote": [c for c in remote if not c.closed], "local": [c for c in local if not c.closed]}
admitted = let_in["remote"] + let_in["local"]
time.sleep(0.7)  # connections become the ones to close for room after 1 s

# The attack goes on: a header line a second on each, 10 body bytes a second.
t_end = time.monotonic() + header_timeout + 2
healths, worst, tick, legit_done = 0, 0.0, 0, False
while time.monotonic() < t_end:
    tick += 1
    for c in remote + local:
        c.poll()
        if tick % 2 == 0:
            c.send(b"X-Slow-%d: x\r\n" % tick)
    body.poll()
    body.send(b"x" * 5)
    src = "127.0.0.1" if tick % 2 else "127.0.0.2"
    line, dt = health(src)
    healths += 1
    worst = max(worst, dt)
    if " 200 " not in line + " ":
        fail("/healthz from %s at %.1f s into the attack: %s (%.2f s)"
             % (src, time.monotonic() - remote[0].opened, line, dt))
    elif dt > 2:
        fail("/healthz from %s took %.2f s" % (src, dt))
    if not legit_done:  # a slow but honest client: headers over 1.5 s
        legit_done = True
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5,
                                         source_address=("127.0.0.3", 0))
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            time.sleep(0.75)
            s.sendall(b"Host: keel\r\n")
            time.sleep(0.75)
            s.sendall(b"Connection: close\r\n\r\n")
            got = s.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
            s.close()
            if " 200 " not in got + " ":
                fail("a client taking 1.5 s over its headers got: %r" % got)
        except OSError as e:
            fail("a client taking 1.5 s over its headers: %s" % e)
    time.sleep(0.5)

for c in remote + local + [body]:
    c.poll()
lives = []
for c in admitted:
    if not c.closed:
        fail("a slow connection from %s is still open %.1f s after it began (header_timeout %.0f s)"
             % (c.src, time.monotonic() - c.opened, header_timeout))
    else:
        lives.append(c.closed - c.opened)
# closed for room (health checks) after 1 s at least; by the deadline after about header_timeout
if lives and min(lives) < 0.9:
    fail("a slow connection was closed after %.2f s" % min(lives))
if lives and max(lives) > header_timeout + 2.0:
    fail("a slow connection was closed only after %.2f s (header_timeout %.0f s)"
         % (max(lives), header_timeout))
if not body.closed:
    fail("the body sent at 10 bytes a second is still open after %.1f s"
         % (time.monotonic() - body.opened))
elif not header_timeout - 0.5 < body.closed - body.opened < header_timeout + 2.5:
    fail("the body sent at 10 bytes a second was cut off after %.2f s"
         % (body.closed - body.opened))

print("slow connections let in: %d of %d from 127.0.0.5, %d of %d from 127.0.0.1; "
      "closed after %.2f..%.2f s; slow body cut after %s; %d health checks, slowest %.2f s"
      % (len(let_in["remote"]), len(remote), len(let_in["local"]), len(local),
         min(lives) if lives else -1, max(lives) if lives else -1,
         "%.2f s" % (body.closed - body.opened) if body.closed else "never", healths, worst))
if fails:
    print("FAIL: " + "\nFAIL: ".join(fails[:10]))
    sys.exit(1)
