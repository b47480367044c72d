#!/usr/bin/python3
"""Round trip through brokerd with Debian's stomp.py, an unmodified third-party
client: persistent SENDs with receipts, a client-individual subscription,
ACKs with receipts, for each STOMP version stomp.py speaks.

usage: stomppy_roundtrip.py HOST PORT COUNT
Prints "ok VERSION N" per version, exits non-zero on any failure.
With STOMP_TLS_CA set it speaks TLS, verifying the broker against that CA
(and presenting STOMP_TLS_CERT/STOMP_TLS_KEY if set); with STOMP_LOGIN it
logs in with STOMP_PASSCODE."""
import os
import sys
import threading
import stomp

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.cond = threading.Condition()
        self.receipts = set()
        self.messages = []
        self.errors = []

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers["receipt-id"])
            self.cond.notify_all()

    def on_message(self, frame):
        with self.cond:
            self.messages.append(frame)
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.errors.append(frame.headers.get("message"))
            self.cond.notify_all()

    def wait(self, pred, what):
        with self.cond:
            if not self.cond.wait_for(lambda: pred() or self.errors, timeout=10):
                sys.exit("timed out waiting for " + what)
            if self.errors:
                sys.exit("ERROR from broker: %s" % self.errors)


# stomp.py writes heart-beats from a thread of its own. Over TLS that write
# can overlap the main thread's on one ssl socket, which Python's ssl does
# not make safe ("[SSL] internal error" in sendall, now and then): no
# heart-beats over TLS.
heartbeats = (0, 0) if os.environ.get("STOMP_TLS_CA") else (1000, 1000)
for version, cls in (("1.1", stomp.Connection11), ("1.2", stomp.Connection12)):
    conn = cls([(host, port)], heartbeats=heartbeats)
    if os.environ.get("STOMP_TLS_CA"):
        conn.set_ssl(for_hosts=[(host, port)], ca_certs=os.environ["STOMP_TLS_CA"],
                     cert_file=os.environ.get("STOMP_TLS_CERT"), key_file=os.environ.get("STOMP_TLS_KEY"))
    l = Listener()
    conn.set_listener("", l)
    conn.connect(os.environ.get("STOMP_LOGIN"), os.environ.get("STOMP_PASSCODE"), wait=True)
    queue = "/queue/stomppy-" + version
    for i in range(count):
        rid = "r%d" % i
        conn.send(queue, "message %d" % i, headers={"persistent": "true", "seq": str(i)}, receipt=rid)
        l.wait(lambda: rid in l.receipts, "receipt " + rid)
    conn.subscribe(queue, id="s1", ack="client-individual")
    l.wait(lambda: len(l.messages) >= count, "messages")
    seqs = sorted(int(m.headers["seq"]) for m in l.messages)
    if seqs != list(range(count)):
        sys.exit("got seqs %s" % seqs)
    for m in l.messages:
        if version == "1.2":
            conn.ack(m.headers["ack"], receipt="a" + m.headers["seq"])
        else:
            conn.ack(m.headers["message-id"], "s1", receipt="a" + m.headers["seq"])
    l.wait(lambda: all(("a%d" % i) in l.receipts for i in range(count)), "ack receipts")
    conn.disconnect()
    print("ok", version, count, flush=True)
