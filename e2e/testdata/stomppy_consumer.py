#!/usr/bin/python3
"""A legacy consumer on Debian's stomp.py (8.0), for the chaos suite.

It knows one address, the sidecar's: it subscribes to QUEUE with ack
client-individual and ACKs every MESSAGE as it arrives; when the connection
ends for any reason it connects and subscribes again, to the same address.

usage: stomppy_consumer.py HOST PORT QUEUE

Prints one line per event on stdout, which the Go harness parses:
  delivered <seq> <redelivered> <unix_ns>
  connected <unix_ns>
  disconnected <why>
SIGTERM stops it; it then prints "stopped"."""
import signal
import sys
import threading
import time

import stomp

host, port, queue = sys.argv[1], int(sys.argv[2]), sys.argv[3]

CONNECT_TIMEOUT = 40.0  # longer than the sidecar holds a client (30s)
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
        self.conn = None
        self.connected = False
        self.gone = None

    def on_connected(self, frame):
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def on_message(self, frame):
        h = frame.headers
        emit("delivered", h.get("seq", "-"), h.get("redelivered", "false"), time.time_ns())
        try:
            # STOMP 1.2: the ack header names the message.
            self.conn.ack(h["ack"])
        except Exception as e:
            # The connection is going; the message is the broker's to
            # redeliver, which the harness counts as a duplicate.
            emit("ackfailed", h.get("seq", "-"), type(e).__name__)

    def on_error(self, frame):
        with self.cond:
            self.gone = self.gone or "ERROR " + frame.headers.get("message", "")
            self.cond.notify_all()

    def on_disconnected(self):
        with self.cond:
            self.gone = self.gone or "connection lost"
            self.cond.notify_all()

    def wait(self, pred, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                if self.gone is not None or stopping.is_set():
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


while not stopping.is_set():
    l = Listener()
    conn = stomp.Connection12([(host, port)], reconnect_attempts_max=1, heartbeats=(0, 0))
    l.conn = conn
    conn.set_listener("", l)
    try:
        conn.connect(wait=False)
    except Exception as e:
        emit("disconnected", "connect: %s" % type(e).__name__)
        drop(conn)
        time.sleep(RECONNECT_DELAY)
        continue
    if not l.wait(lambda: l.connected, CONNECT_TIMEOUT):
        emit("disconnected", "no CONNECTED: %s" % (l.gone or "timeout"))
        drop(conn)
        time.sleep(RECONNECT_DELAY)
        continue
    emit("connected", time.time_ns())
    try:
        conn.subscribe(queue, id="chaos", ack="client-individual")
    except Exception as e:
        emit("disconnected", "subscribe: %s" % type(e).__name__)
        drop(conn)
        continue
    # Runs until the connection ends or SIGTERM; messages arrive on the
    # receiver thread meanwhile.
    l.wait(lambda: False, float("inf"))
    emit("disconnected", (l.gone or "closing").replace(" ", "_"))
    drop(conn)
emit("stopped")
