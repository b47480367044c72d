// Package stompproxy is handover's STOMP-aware data path (protocol =
// "stomp"): a client session that survives the death of its master.
//
// With plain TCP routing (package proxy) a failover breaks every client
// connection, and a legacy client that never reconnects stops working.
// Here the sidecar parses the frames both ways (package frame, with its
// limits) and remembers, per client session, what a new master must be told
// to carry the session on, as ActiveMQ's failover transport does for Java
// clients. When the broker connection dies (EOF, a reset, a heart-beat
// timeout, or the Picker's targets moving away from it, unless the Picker
// keeps it: see "Draining") the client's socket
// stays open: the sidecar asks for a health re-check, waits for a master
// (up to Options.Timeout, with the same backoff as TCP mode), sends it the
// client's own CONNECT (the CONNECTED is consumed: the client never sees a
// second one, and a different version ends the session with an ERROR),
// replays every SUBSCRIBE with its id and headers, then the open
// transactions and every frame still waiting for its RECEIPT, in the order
// the client sent them, and carries on. Throughout the pause heart-beats go
// on to the client at the negotiated rate; frames the client sends are
// buffered (up to MaxReplayBytes, then the client is simply not read) and
// forwarded after the replay.
//
// Reading order: service.go (accept, targets, shutdown), session.go (one
// client: its goroutines, the resume), tracker.go (the bookkeeping, no
// I/O), credentials.go (the sidecar's own login); the listener, the
// connection caps, and waiting for and reaching a master are
// internal/serve's (Lifecycle, Connector), which proxy uses too.
//
// # Credentials
//
// With Options.Credentials, the sidecar logs in for its clients: every
// CONNECT it sends upstream (a session's first, and the client's own
// CONNECT again at each resume) carries the sidecar's login and a passcode
// read at that moment, in place of the client's, so a legacy application
// holds no broker secret and a rotated passcode file is used from the next
// connection on. A broker that refuses them answers ERROR, which reaches
// the client as it came.
//
// # Draining
//
// A backend that leaves the Picker's targets but that the Picker keeps
// (proxy.Keeper; health.Monitor keeps a backend an operator drains, and a
// master removed from the backend list) keeps its sessions until they end
// or it stops being kept; no new session, and no resume, goes to it.
//
// # SENDs
//
// Every SEND outside a transaction that asks for a receipt is stamped with
// handover-producer (an id unique to the session) and handover-seq (1, 2,
// 3, … per session), kept until its RECEIPT and re-sent, with the same
// stamp, by a resume. brokerd drops a SEND whose (producer, seq) it already
// persisted and still answers its receipt, so against brokerd a replayed
// SEND is never stored twice; against other brokers a replay is
// at-least-once. A SEND without a receipt is the client's choice of
// at-most-once: it is not kept, and one in flight at a failover may be lost.
// Never replayed, it can never be a duplicate, so it goes through as the
// client wrote it, unstamped, and costs the broker no window update.
//
// Most SENDs are written plainly (LF line endings, no escapes), and those
// are not parsed: one without a receipt passes byte for byte; one with a
// receipt gets its stamp and the sidecar's receipt header spliced in after
// the command line, loses its own receipt header, and is kept in that wire
// form for a replay, which changes only the receipt id. The broker's bare
// RECEIPT for it is answered without parsing either.
//
// # ACK and NACK across a failover
//
// brokerd recovers a message under the same message-id and marks it
// redelivered:true, so messages delivered but not settled before the
// failover come again from the new master with the same message-id. The
// sidecar therefore keeps, per subscription in ack mode client or
// client-individual, the deliveries the client has and has not settled
// ("settled": the broker confirmed the client's ACK or NACK; the sidecar
// forwards every ACK and NACK with a receipt of its own for that purpose,
// and answers the client's receipt, if any, when it comes back). At a
// failover those deliveries become stale, and:
//
//   - When the new master redelivers a stale delivery (same subscription,
//     same message-id), it is not passed to the client, which has it
//     already; the sidecar notes its new ack id.
//   - An ACK or NACK of a stale delivery, sent before or after the failover,
//     is forwarded with the new ack id once the redelivery has arrived, and
//     held until then. A hold ends when the redelivery comes, when the
//     subscription ends, or after Timeout: the message then went to another
//     consumer or, not persistent, died with the old master; there is
//     nothing left to settle, so the client's receipt is answered.
//   - Ack mode client is cumulative in both directions, but the client's
//     order and the new master's may differ after a failover. A client ACK
//     covers what the client got up to that message; the sidecar forwards
//     a cumulative ACK only for the longest run at the head of the broker's
//     own delivery order that the client has acknowledged, naming its last
//     (latest redelivered) message, so the broker is never told of an ACK
//     the client did not give. NACK names one message in every mode.
//   - A plain /topic/ subscription (no durable subscription name) keeps
//     nothing across a failover: its stale deliveries are never redelivered,
//     so ACKs and NACKs of them are answered by the sidecar.
//   - Ack mode auto: nothing is tracked; a message in flight at a failover
//     may come twice.
//
// # Transactions
//
// Every frame of an open transaction is kept until it ends, so a resume
// replays BEGIN and the frames so far, and the client can go on and
// COMMIT. SENDs in a transaction are not stamped: they are applied only at
// COMMIT, so cannot be duplicates, and a stamp taken at SEND time would fall
// behind later stamps. A COMMIT is always sent with a receipt; if the
// connection dies before that receipt, the outcome is unknown, and the
// client gets an ERROR naming the transaction (with the COMMIT's receipt-id
// if it had one) and is closed: a transaction is never silently applied
// twice or dropped. A transactional ACK of a stale delivery is held like
// any other, and the COMMIT waits for it.
//
// # A broker's ERROR
//
// Only a broker connection that dies without a word is a failover. A broker
// that ends the session on purpose sends an ERROR, then closes (STOMP 1.2
// "ERROR": a frame it refused, a slow consumer dropped, a flow control
// timeout); resuming such a session elsewhere would hide from the client
// what the broker told it, and SENDs it may have discarded (issue 14). The
// ERROR goes to the client, with the client's own receipt-id if it names a
// frame, and the client is closed. A failed write to the broker therefore
// never closes the broker's socket when the broker reset it (upstream.broken):
// its ERROR may still be waiting there to be read.
//
// # Limits
//
// A client has ConnectTimeout from accept to send its whole CONNECT frame,
// a deadline its bytes do not move on; MaxConnections and
// MaxConnectionsPerSource refuse, with an ERROR, a client over them (see
// serve.Settings).
//
// A client that has not taken a write (64 KiB at most) within
// ClientWriteTimeout has stopped reading its socket: it is closed with its
// broker connection (logged, counted as client_write_timeout), as brokerd
// drops a client that stops reading, and the broker redelivers what the
// client left unacknowledged.
// Nothing piles up for such a client meanwhile: the broker's next frame is
// read only once the client's writer has taken the last one, so TCP pushes
// back on the broker.
//
// What a session keeps (frames awaiting receipts, open transactions,
// subscriptions, unsettled deliveries) is charged against MaxReplayBytes. A
// session over it stops being resumable for good: it lets go of its replay
// copies, keeps nothing new, and the next upstream loss closes the client
// (logged, counted as over_limit), as TCP mode would.
package stompproxy
