#!/usr/bin/python3
"""A legacy stomp.py (8.0) client that never reconnects, for the chaos suite's
transparent-failover scenario (protocol = "stomp").

It makes one connection to the sidecar and uses it for the whole run. The
transport's reconnect_attempts_max is 1: in stomp.py 8.0 that count includes
the first attempt (0 would never connect at all, see
stomp/transport.py attempt_connection), and the transport never reconnects on
its own after a lost connection. Any end of the connection the client did
not ask for, any ERROR frame, a RECEIPT that does not come, is printed as
"broken <why>" and the client exits 1.

usage: stomppy_oneconn.py producer HOST PORT QUEUE ID PACE_MS
       stomppy_oneconn.py consumer HOST PORT QUEUE

Prints, like stomppy_producer.py and stomppy_consumer.py:
  sending <seq> <unix_ns>
  receipted <seq> <unix_ns>
  delivered <seq> <redelivered> <unix_ns>
  connected <unix_ns>
  broken <why>
SIGTERM stops it (a producer after the SEND in flight); it DISCONNECTs with a
receipt, prints "stopped" and exits 0."""
import signal
import sys
import threading
import time

import stomp

role, host, port, queue = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

# Longer than a failover the sidecar hides (it holds the session up to its
# timeout, 30s): the pause must show in the figures, not end the client.
RECEIPT_TIMEOUT = 40.0
CONNECT_TIMEOUT = 40.0

out_lock = threading.Lock()
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())


def emit(*fields):
    with out_lock:
        sys.stdout.write(" ".join(str(f) for f in fields) + "\n")
        sys.stdout.flush()


def broken(why):
    emit("broken", why)
    sys.stdout.flush()
    sys.exit(1)


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.cond = threading.Condition()
        self.conn = None
        self.connected = False
        self.closing = False
        self.gone = None
        self.receipts = {}

    def on_connected(self, frame):
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def on_receipt(self, frame):
        now = time.time_ns()
        with self.cond:
            self.receipts[frame.headers.get("receipt-id")] = now
            self.cond.notify_all()

    def on_message(self, frame):
        h = frame.headers
        emit("delivered", h.get("seq", "-"), h.get("redelivered", "false"), time.time_ns())
        try:
            self.conn.ack(h["ack"])
        except Exception as e:
            with self.cond:
                self.gone = self.gone or "ACK: %s" % type(e).__name__
                self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.gone = self.gone or "ERROR " + frame.headers.get("message", "")
            self.cond.notify_all()

    def on_disconnected(self):
        with self.cond:
            if not self.closing:
                self.gone = self.gone or "connection lost"
            self.cond.notify_all()

    def wait(self, pred, timeout, stop_aware):
        """True once pred() holds; False on SIGTERM (if stop_aware) or the
        timeout; broken() if the connection ends."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                if self.gone is not None:
                    broken(self.gone.replace(" ", "_"))
                if stop_aware and stopping.is_set():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.1))
            return True


l = Listener()
conn = stomp.Connection12([(host, port)], reconnect_attempts_max=1, heartbeats=(0, 0))
l.conn = conn
conn.set_listener("", l)
try:
    conn.connect(wait=False)
except Exception as e:
    broken("connect:_%s" % type(e).__name__)
if not l.wait(lambda: l.connected, CONNECT_TIMEOUT, True):
    broken("no_CONNECTED")
emit("connected", time.time_ns())

if role == "producer":
    ident, pace = sys.argv[5], int(sys.argv[6]) / 1000.0
    n = 0
    while not stopping.is_set():
        n += 1
        seq = "%s-%d" % (ident, n)
        rid = "r-" + seq
        emit("sending", seq, time.time_ns())
        try:
            conn.send(queue, "message " + seq, headers={"persistent": "true", "seq": seq}, receipt=rid)
        except Exception as e:
            broken("SEND_%s:_%s" % (seq, type(e).__name__))
        if not l.wait(lambda: rid in l.receipts, RECEIPT_TIMEOUT, False):
            broken("SEND_%s:_no_RECEIPT_within_%.0fs" % (seq, RECEIPT_TIMEOUT))
        emit("receipted", seq, l.receipts.pop(rid))
        if pace > 0:
            time.sleep(pace)
else:
    try:
        conn.subscribe(queue, id="chaos", ack="client-individual")
    except Exception as e:
        broken("SUBSCRIBE:_%s" % type(e).__name__)
    l.wait(lambda: False, float("inf"), True)

# Stopped: a clean DISCONNECT, with a receipt, on the same connection.
with l.cond:
    l.closing = True
try:
    conn.disconnect(receipt="bye")
except Exception as e:
    broken("DISCONNECT:_%s" % type(e).__name__)
emit("stopped")
