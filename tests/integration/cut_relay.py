#!/usr/bin/env python3
"""cut_relay.py PORT_FILE TARGET_PORT CUT_AFTER CUTS: a TCP relay on
127.0.0.1 (a free port, written to PORT_FILE) to 127.0.0.1:TARGET_PORT.
The first CUTS connections are dropped (both sides closed) once CUT_AFTER
bytes went from the server to the client; later ones pass through. A
link that breaks mid-download, several times (tests/integration/55-*)."""
import socket
import sys
import threading

port_file, target, cut_after, cuts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
lock = threading.Lock()
state = {"conns": 0}


def pipe(src, dst, limit, done):
    sent = 0
    try:
        while True:
            want = 65536 if limit is None else min(65536, limit - sent)
            if want <= 0:
                break
            data = src.recv(want)
            if not data:
                break
            dst.sendall(data)
            sent += len(data)
    except OSError:
        pass
    done.set()


def serve(client):
    with lock:
        state["conns"] += 1
        cut = state["conns"] <= cuts
    try:
        server = socket.create_connection(("127.0.0.1", target))
    except OSError:
        client.close()
        return
    done = threading.Event()
    threading.Thread(target=pipe, args=(client, server, None, done), daemon=True).start()
    threading.Thread(target=pipe, args=(server, client, cut_after if cut else None, done),
                     daemon=True).start()
    done.wait()
    for s in (client, server):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0))
ls.listen(16)
with open(port_file + ".tmp", "w") as f:
    f.write(str(ls.getsockname()[1]))
import os
os.rename(port_file + ".tmp", port_file)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
