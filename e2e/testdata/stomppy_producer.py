#!/usr/bin/python3
"""A legacy producer on Debian's stomp.py (8.0), for the chaos suite.

It knows one address, the sidecar's, and behaves as an unchanged application
would: persistent SENDs with a receipt each, one at a time; after any error
(a lost connection, an ERROR frame, a receipt that does not come) it drops
the connection and connects again to the same address. It never resends: a
SEND without its RECEIPT is in doubt, and its seq is not reused.

usage: stomppy_producer.py HOST PORT QUEUE ID PACE_MS

Prints one line per event on stdout, which the Go harness parses:
  sending <seq> <unix_ns>      before each SEND (the seq is "ID-N")
  receipted <seq> <unix_ns>    when its RECEIPT arrived
  failed <seq> <why>           the SEND is in doubt
  connected <unix_ns>
  disconnected <why>
SIGTERM stops it after the SEND in flight; it then prints "stopped"."""
import signal
import sys
import threading
import time

import stomp

host, port, queue, ident, pace = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]) / 1000.0

# The receipt of a persistent SEND needs one fsync; five seconds without it
# means the connection is dead in all but name (a frozen broker).
RECEIPT_TIMEOUT = 5.0
# Longer than the sidecar holds a new client while there is no master (30s),
# so a held connection is given every chance to reach the next master.
CONNECT_TIMEOUT = 40.0
RECONNECT_DELAY = 0.02

out_lock = threading.Lock()
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())


def emit(*fields):
    with out_lock:
        sys.stdout.write(" ".join(str(f) for f in fields) + "\n")
        sys.stdout.flush()


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.cond = threading.Condition()
        self.connected = False
        self.gone = None  # why the connection ended, once it has
        self.receipts = {}  # receipt id -> unix ns of its arrival

    def on_connected(self, frame):
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def on_receipt(self, frame):
        now = time.time_ns()
        with self.cond:
            self.receipts[frame.headers.get("receipt-id")] = now
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.gone = self.gone or "ERROR " + frame.headers.get("message", "")
            self.cond.notify_all()

    def on_disconnected(self):
        with self.cond:
            self.gone = self.gone or "connection lost"
            self.cond.notify_all()

    def wait(self, pred, timeout, stop_aware):
        """Waits until pred() holds (True), the connection ends, the timeout
        passes or, if stop_aware, SIGTERM arrives (False)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                if self.gone is not None or (stop_aware and stopping.is_set()):
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.1))
            return True


def drop(conn):
    try:
        conn.transport.disconnect_socket()
    except Exception:
        pass


def connect():
    l = Listener()
    conn = stomp.Connection12([(host, port)], reconnect_attempts_max=1, heartbeats=(0, 0))
    conn.set_listener("", l)
    try:
        conn.connect(wait=False)
    except Exception as e:
        emit("disconnected", "connect: %s" % type(e).__name__)
        drop(conn)
        return None, None
    if not l.wait(lambda: l.connected, CONNECT_TIMEOUT, True):
        emit("disconnected", "no CONNECTED: %s" % (l.gone or "timeout"))
        drop(conn)
        return None, None
    emit("connected", time.time_ns())
    return conn, l


n = 0
while not stopping.is_set():
    conn, l = connect()
    if conn is None:
        time.sleep(RECONNECT_DELAY)
        continue
    while not stopping.is_set():
        n += 1
        seq = "%s-%d" % (ident, n)
        rid = "r-" + seq
        emit("sending", seq, time.time_ns())
        try:
            conn.send(queue, "message " + seq, headers={"persistent": "true", "seq": seq}, receipt=rid)
        except Exception as e:
            emit("failed", seq, "send: %s" % type(e).__name__)
            break
        if not l.wait(lambda: rid in l.receipts, RECEIPT_TIMEOUT, False):
            emit("failed", seq, (l.gone or "no receipt within %.0fs" % RECEIPT_TIMEOUT).replace(" ", "_"))
            break
        emit("receipted", seq, l.receipts.pop(rid))
        if pace > 0:
            time.sleep(pace)
    emit("disconnected", l.gone or "closing")
    drop(conn)
emit("stopped")
