# The cloud link (CONTRACT section 4). Runs in its own thread - the main
# thread on a board - so the control loop never waits on the network.
#
# Owns what umqtt.simple does not: keepalive pings on a timer, reconnect with
# exponential backoff and jitter (reset only once a session has lasted:
# a second client with our client id makes every session short, and one
# `session_taken_over` event says so), QoS 1 telemetry retried from the persistent
# outbox with the same seq until acknowledged, retained state and status
# with a Last Will. Network timing is real time; record timestamps come from
# the (possibly simulated) clock.
import json
import os
import time

from micropython import const

from v2g import log
from v2g.mqtt import PKT_MIN, BrokerClosed, Client, TlsError, open_stream, tls_context
from v2g.shared import state_of

_TIMEOUT_S = const(5)  # any single network operation
_STOP_TIMEOUT_S = const(1)  # each step of a clean stop
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
# A session is stable (the backoff starts again from 1 s) once it has lasted
# longer than two longest waits: two boards with one client id, each kicking
# the other out when its backoff ends, then never count as stable and both
# stay at the longest backoff, instead of starting over every minute.
_STABLE_MS = const(2 * _BACKOFF_MAX_MS)
_TAKEOVER_FLAPS = const(2)  # short sessions in a row closed by the broker
_STATE_EVERY_MS = const(10000)  # state at least this often (real time)
_DRAIN_PER_PASS = const(50)  # outbox records per loop pass, so commands keep flowing
_LOOP_MS = const(20)
_READ_PER_PASS = const(4)
_RESULTS_KEPT = const(16)
_EVENTS_KEPT = const(64)  # event records waiting for the broker, at most ...
_EVENT_BYTES = const(6144)  # ... and at most this many bytes of them (about 18 mode events)


def _rand_below(n):
    return int.from_bytes(os.urandom(2), "little") % max(1, n)


class CloudLink:
    def __init__(self, cfg, clock, shared, outbox, commands, tls_ctx=None, rec=None):
        """rec: a copy of the status record (shared.read()) made at boot
        before the config, for this thread to refill; else one is made."""
        m = cfg["mqtt"]
        self.cfg = cfg
        self.clock = clock
        self.shared = shared  # the control loop's port (v2g.shared): all this thread sees of it
        self.stop_signals = None  # unix port: v2g.hal.stopsig.StopSignals, polled each pass
        self.rec = shared.read(rec)  # this thread's copy of the status record, refilled in place
        self.outbox = outbox
        self.commands = commands
        self.host, self.port = m["host"], m["port"]
        self.tls = m["tls"] or None
        # Both made once (at boot, while the heap is whole) and kept for
        # every reconnect: after a day of running the heap may not have a
        # free 3 KB block for a new SSLContext.
        self.tls_ctx = tls_ctx
        self.pkt = bytearray(PKT_MIN)
        self.keepalive_s = m["keepalive_s"]
        self.root = "v2g/1/" + cfg["device_id"] + "/"
        self.t_status = (self.root + "status").encode()
        self.t_state = (self.root + "state").encode()
        self.t_telemetry = (self.root + "telemetry").encode()
        self.t_event = (self.root + "event").encode()
        self.t_cmd = (self.root + "cmd").encode()
        self.t_result = (self.root + "cmd/result").encode()
        self.client = None  # the MQTT client while connected, else None
        self.mqtt = None  # the one client object, made at the first connect
        self.connected = False
        self.backoff_ms = _BACKOFF_MIN_MS
        self.next_try_ms = time.ticks_ms()
        self.connected_ms = None  # when the session began; None once it is stable
        self.flaps = 0  # sessions in a row the broker closed before they were stable
        self.last_state_ms = None
        self.state_after = None  # (action number, deadline): show an accepted command's effect
        self.state_seq = -1
        self.results = []  # cmd/result records waiting to be published
        self.pending_events = []  # event records' JSON text, oldest first
        self.pending_bytes = 0
        self.last_error = None
        self.running = False
        # SNTP (v2g.timesync): loaded only while wanted, at ntp_at_ms
        # (ticks; None: never, set by the app), and unloaded once it answered
        self.timesync = None
        self.ntp_at_ms = None

    # --- connection

    def _connect(self):
        c = self.mqtt
        if c is None:
            # made once, kept for every reconnect (Client.renew)
            m = self.cfg["mqtt"]
            c = self.mqtt = Client(m["client_id"], self.host, self.port, m["user"], m["password"],
                                   self.keepalive_s, self.pkt)
            c.set_last_will(self.t_status, b"offline", True, 1)
            c.set_callback(self._on_message)
        else:
            c.renew()
        stream = open_stream(self.host, self.port, _TIMEOUT_S, self.stream_context())
        c.open(stream, True)
        self.client = c
        c.subscribe(self.t_cmd, 1)
        c.publish(self.t_status, b"online", True, 1)
        self.connected = True
        self.connected_ms = time.ticks_ms()  # the backoff goes on until the session is stable
        self.last_state_ms = None  # publish state right away
        self._event("cloud_connected", {"broker": self.host + ":" + str(self.port), "tls": bool(self.tls)})

    def stream_context(self):
        """The TLS context for open_stream (None without TLS), made on first
        use if start-up could not (raises what is wrong with the files)."""
        if self.tls and self.tls_ctx is None:
            self.tls_ctx = tls_context(self.tls)
        return self.tls_ctx

    def _drop(self, err):
        import gc

        gc.collect()
        self.last_error = type(err).__name__ + ": " + str(err)
        if self.client is not None:
            try:
                self.client.sock.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
            self.client.renew()  # lets go of the stream (and its TLS session)
        was = self.connected
        self.client = None
        self.connected = False
        # results in flight go again on the next connection
        self.results = [(None, p) for _, p in self.results]
        # full jitter on an exponential backoff: a fleet that lost its
        # broker together must not reconnect together
        wait_ms = self.backoff_ms // 2 + _rand_below(self.backoff_ms // 2)
        self.next_try_ms = time.ticks_add(time.ticks_ms(), wait_ms)
        self.backoff_ms = min(self.backoff_ms * 2, _BACKOFF_MAX_MS)
        kind = "tls_error" if isinstance(err, TlsError) else "cloud_lost" if was else "cloud_connect_failed"
        self._event(kind, {"error": self.last_error, "retry_in_ms": wait_ms})
        if was and self.connected_ms is not None and isinstance(err, BrokerClosed):
            # closed by the broker before the session was stable: once is a
            # broker restart, twice in a row is someone with our client id
            self.flaps += 1
            if self.flaps == _TAKEOVER_FLAPS:
                self._event("session_taken_over", {
                    "flaps": self.flaps, "client_id": self.cfg["mqtt"]["client_id"],
                    "detail": "the broker closed %d sessions in a row soon after connect: another client uses "
                              "this client id (a cloned board?); backing off up to %d s" % (
                                  self.flaps, _BACKOFF_MAX_MS // 1000)})

    # --- inbound commands

    def _on_message(self, topic, msg):
        if topic != self.t_cmd:
            return
        res = self.commands.handle(msg)
        # Sent at once, without waiting for the PUBACK: a flood of commands
        # then costs one result at a time in RAM. Kept (bounded) until
        # acknowledged, and re-sent after a reconnect.
        payload = json.dumps(res).encode()
        pid = self.client.publish(self.t_result, payload, False, 1, False)
        self.results.append((pid, payload))
        if len(self.results) > _RESULTS_KEPT:
            self.results.pop(0)
        if res["ok"]:
            # acknowledge by re-published state once the control loop has
            # applied it (its next tick; at the latest after 5 s)
            self.state_after = (self.commands.posted, time.ticks_add(time.ticks_ms(), 5000))
        log.event("cmd", {"id": res["id"], "ok": res["ok"], "error": res["error"], "detail": res["detail"]})

    # --- outbound

    def _event(self, kind, fields):
        self._queue_event(log.record(kind, fields, self.clock.time()))

    def _queue_event(self, b):
        # b: a record's JSON text (log.record). Bounded in bytes as well as in
        # number: while the broker is away (or a TLS handshake finds no
        # heap) events pile up, and 64 of them as dicts with their values
        # were tens of KB of a 100 KB heap, making the next connect fail the
        # same way. The oldest go first; telemetry is on flash, loses nothing.
        q = self.pending_events
        q.append(b)
        self.pending_bytes += len(b)
        while len(q) > _EVENTS_KEPT or (self.pending_bytes > _EVENT_BYTES and len(q) > 1):
            self.pending_bytes -= len(q.pop(0))

    def _collect(self):
        """Move what the control thread produced into the outbox / queues."""
        tm = self.shared.telemetry
        while True:
            rec = tm.pop()
            if rec is None:
                break
            self.outbox.append(rec)
        dropped = self.outbox.take_drop_report()
        if dropped:
            self._event("telemetry_dropped", {"count": dropped, "acked_up_to": self.outbox.acked, "where": "outbox full"})
        lost = tm.take_dropped()
        if lost:
            # only if this thread stalled for 64 records' time (x1000 sims)
            self._event("telemetry_dropped", {"count": lost, "where": "before the outbox"})
        for rec in self.shared.events.take():
            self._queue_event(rec)

    def _publish_all(self):
        c = self.client
        # results not yet acknowledged (e.g. sent before a reconnect)
        keep = []
        for pid, payload in self.results:
            if not c.awaiting(pid):  # None (re-send) is never awaited
                if pid is not None:
                    continue  # acknowledged
                pid = c.publish(self.t_result, payload, False, 1, False)
            keep.append((pid, payload))
        self.results = keep
        q = self.pending_events
        while q:
            c.publish(self.t_event, q[0].encode(), False, 1)
            self.pending_bytes -= len(q.pop(0))
        now = time.ticks_ms()
        sa = self.state_after
        st = self.shared.status
        due = sa is not None and (st.field("actions_applied") >= sa[0] or time.ticks_diff(now, sa[1]) >= 0)
        seq = st.field("mode_seq")
        if (due or self.state_seq != seq or self.last_state_ms is None
                or time.ticks_diff(now, self.last_state_ms) >= _STATE_EVERY_MS):
            rec = st.read(self.rec)  # one tick's values, in this thread's copy
            self.state_seq = rec["mode_seq"]
            if due:
                self.state_after = None
            c.publish(self.t_state, json.dumps(state_of(rec)).encode(), True, 1)
            self.last_state_ms = now
        for _ in range(_DRAIN_PER_PASS):
            head = self.outbox.peek()
            if head is None:
                break
            # publish() returns only after the PUBACK for this packet
            c.publish(self.t_telemetry, head[1], False, 1)
            self.outbox.ack(head[0])
        self.outbox.flush()

    def _keepalive(self):
        c = self.client
        now = time.ticks_ms()
        ka_ms = self.keepalive_s * 1000
        if time.ticks_diff(now, c.last_rx_ms) > ka_ms * 3 // 2:
            raise OSError(-110)  # nothing heard: the broker (or the path) is gone
        if time.ticks_diff(now, c.last_tx_ms) >= ka_ms // 2:
            c.ping()

    def _sync_time(self):
        # bounded (one UDP exchange, 2 s); the control loop sees the clock
        # step at its next wall check and replans (clock_set / clock_jump)
        ts = self.timesync
        if ts is None:
            if time.ticks_diff(time.ticks_ms(), self.ntp_at_ms) < 0:
                return
            from v2g.timesync import TimeSync

            ts = self.timesync = TimeSync(self.cfg, self.clock)
        got = ts.step()
        if got is None:
            return
        log.event("sntp", {"server": ts.host + ":" + str(ts.port), "was": got[0], "step_s": got[1]})
        # its 1.5 KB are worth more to TLS until the next resync (boards:
        # RTC drift; the unix port keeps the OS clock from now on)
        self.ntp_at_ms = time.ticks_add(time.ticks_ms(), ts.resync_ms) if ts.on_board else None
        self.timesync = None
        import v2g

        v2g.unload("v2g.timesync")

    # --- loop

    def step(self):
        """One pass: never blocks longer than the socket timeout."""
        self._collect()
        if self.ntp_at_ms is not None:
            self._sync_time()
        if not self.connected:
            if time.ticks_diff(time.ticks_ms(), self.next_try_ms) < 0:
                return
            try:
                self._connect()
            except (OSError, IndexError, AssertionError, ValueError, MemoryError) as e:
                # umqtt asserts on an unexpected CONNACK: same as a failure.
                # MemoryError (a handshake's block not found in a fragmented
                # heap): a failed connect too, retried after the backoff from
                # a collected heap, never every pass
                self._drop(e)
                return
        if self.connected_ms is not None and time.ticks_diff(time.ticks_ms(), self.connected_ms) >= _STABLE_MS:
            # a session that lasted: the next loss starts the backoff over
            self.connected_ms = None
            self.backoff_ms = _BACKOFF_MIN_MS
            self.flaps = 0
        try:
            # read what is waiting (commands, pings) without blocking; a few
            # at a time, so a flood of commands cannot pile up results in RAM
            for _ in range(_READ_PER_PASS):
                if self.client.check_msg() is None:
                    break
            self._publish_all()
            self._keepalive()
        except (OSError, IndexError, AssertionError, ValueError, TypeError, MemoryError) as e:
            # MemoryError too: a fragmented heap costs the session, never
            # the thread; the next connect starts from a collected heap
            self._drop(e)

    def run(self):
        import gc

        self.running = True
        while self.running:
            if self.shared.interrupted:  # Ctrl-C that reached the control thread
                self.shared.interrupted = False
                raise KeyboardInterrupt
            sigs = self.stop_signals
            if sigs is not None and sigs.pending():  # SIGINT/SIGTERM, blocked and pending
                raise KeyboardInterrupt
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - the cloud thread must outlive a bug
                gc.collect()
                try:
                    self._event("cloud_error", {"error": type(e).__name__ + ": " + str(e)})
                except MemoryError:
                    pass  # out of heap even for the event: it is lost, the link is not
            time.sleep_ms(_LOOP_MS)

    def stop(self):
        """Clean stop: `offline` (retained) replaces the Last Will. Bounded:
        the stop may have cut a read short, so each step gets a short
        timeout; what is not sent stays in the outbox on flash."""
        self.running = False
        if self.connected:
            try:
                self.client.sock.settimeout(_STOP_TIMEOUT_S)
                self._collect()
                self._publish_all()
                self.client.publish(self.t_status, b"offline", True, 1)
                self.client.disconnect()
            except Exception:  # noqa: BLE001 - stopping regardless
                pass
        self.outbox.flush()
        self.connected = False
        if self.mqtt is not None:
            self.mqtt.renew()  # its stream and TLS session go back to the heap
        self.client = None
