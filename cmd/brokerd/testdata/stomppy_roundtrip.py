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
import select
import ssl
import sys
import threading
import stomp
import stomp.transport


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


# stomp.py reads its socket on a receiver thread while the main thread
# writes it. On an ssl socket the two then run OpenSSL on one connection at
# once, which it does not allow: now and then a write fails with "[SSL]
# internal error", or the CONNECT is never sent. So, over TLS, the receiver
# waits for bytes outside OpenSSL (select) and then reads without blocking,
# under the lock every write takes; the protocol is stomp.py's own.
_ssl_io = threading.Lock()
_send, _receive = stomp.transport.Transport.send, stomp.transport.Transport.receive


def _locked_send(self, encoded_frame):
    with _ssl_io:
        return _send(self, encoded_frame)


def _locked_receive(self):
    sock = self.socket
    if not isinstance(sock, ssl.SSLSocket):
        return _receive(self)
    if not sock.pending():
        select.select([sock], [], [], 0.2)
    with _ssl_io:
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            return sock.recv(self._Transport__recv_bytes)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            raise stomp.exception.InterruptedException()
        finally:
            sock.settimeout(timeout)


stomp.transport.Transport.send = _locked_send
stomp.transport.Transport.receive = _locked_receive

# stomp.py writes heart-beats from a thread of its own; over TLS they would
# only add writes to serialize: none.
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
