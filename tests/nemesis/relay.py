"""A UDP relay that delays packets between nodes: this kernel has no netem (../shared/TESTING.md).

Usage: relay.py ROUTES   where ROUTES is JSON [[relay_port, node_port], ...]
Each node's peers reach it at its relay port. A packet from a peer arriving at relay port R is
forwarded to the node's own port from a socket dedicated to that peer, so the node answers to that
socket, and the answer goes back to the peer from R: both ends see stable addresses, as QUIC needs.

Commands on stdin, one per line: `delay MS JITTER_MS` (0 0 turns it off). Each packet is held for
MS ± JITTER ms (so packets can also be reordered). At most MAX_QUEUED packets wait; beyond that
new packets are dropped, as a full router queue would; at most MAX_PEERS senders get a socket.
Prints `ready` once every port is bound.
"""
import heapq
import json
import os
import random
import selectors
import socket
import sys
import time

MAX_QUEUED = 50_000
MAX_PEERS = 256  # sockets for distinct senders; packets from more senders are dropped


def main():
    routes = json.loads(sys.argv[1])
    sel = selectors.DefaultSelector()
    for relay_port, node_port in routes:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", relay_port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ("public", s, node_port))
    os.set_blocking(sys.stdin.fileno(), False)
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, ("control",))
    per_peer = {}  # (public socket, peer address) -> socket dedicated to that peer
    queue, seq = [], 0
    delay = jitter = 0.0
    pending = b""
    print("ready", flush=True)

    def send(sock, data, addr):
        nonlocal seq
        if delay <= 0 and not queue:
            try:
                sock.sendto(data, addr)
            except OSError:
                pass  # the destination is down: the packet is lost, as on a network
            return
        if len(queue) >= MAX_QUEUED:
            return
        seq += 1
        due = time.monotonic() + max(0.0, delay + random.uniform(-jitter, jitter)) / 1000
        heapq.heappush(queue, (due, seq, sock, data, addr))

    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        for key, _ in sel.select(timeout):
            kind = key.data[0]
            if kind == "control":
                chunk = os.read(sys.stdin.fileno(), 4096)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    parts = line.split()
                    if len(parts) == 3 and parts[0] == b"delay":
                        delay, jitter = float(parts[1]), float(parts[2])
                continue
            try:
                data, addr = key.fileobj.recvfrom(65536)
            except OSError:
                continue
            if kind == "public":
                _, public, node_port = key.data
                peer_sock = per_peer.get((public, addr))
                if peer_sock is None:
                    if len(per_peer) >= MAX_PEERS:
                        continue
                    peer_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    peer_sock.bind(("127.0.0.1", 0))
                    peer_sock.setblocking(False)
                    per_peer[(public, addr)] = peer_sock
                    sel.register(peer_sock, selectors.EVENT_READ, ("peer", public, addr))
                send(peer_sock, data, ("127.0.0.1", node_port))
            else:
                _, public, peer_addr = key.data
                send(public, data, peer_addr)
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, sock, data, addr = heapq.heappop(queue)
            try:
                sock.sendto(data, addr)
            except OSError:
                pass


if __name__ == "__main__":
    main()
