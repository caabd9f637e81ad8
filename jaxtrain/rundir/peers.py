"""Losing a peer process of a multi-process run: one line, a prompt exit, checkpoints intact.

When one process of several dies (SIGKILL, the kernel's OOM killer, a crash), the others
cannot go on. What they did before this module (2 processes on 127.0.0.1, CPU devices,
gloo collectives, jax 0.10.2; process 1 SIGKILLed at step 60):

- Process 0 noticed at once: the step in flight raised `JaxRuntimeError: UNKNOWN: Gloo
  all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:547] Connection closed by
  peer [127.0.0.1]:15283`. But on its way out, JAX's atexit hook
  (`jax.distributed.shutdown`) waited in the coordination service's shutdown barrier for
  the dead process until its heartbeat timed out (100 s by default), then aborted: 85 s
  after the kill, exit status -6 (SIGABRT), 83 lines of stderr (a Python traceback, the
  coordination service's errors, a C++ "Check failure stack trace").
- Had process 0 been inside a checkpoint save or close instead (Orbax's cross-process
  barriers), nothing would have raised at all until that heartbeat timeout: the
  coordination service learns of a dead process only from its missing heartbeats
  (`get_live_nodes` still listed the killed process 95 s after the kill).

So: `lost_peer` recognises the exceptions that mean "a peer is gone" (the strings below
are the ones seen), `exit_lost` prints one line and leaves with `os._exit`, so that neither
Orbax's pending barriers nor JAX's shutdown barrier run; and `PeerWatch` notices a dead
peer by itself, within milliseconds, wherever the main thread is blocked: every process
keeps one TCP connection to process 0, which the kernel closes when the process dies,
however it dies. A process that leaves on purpose (the run ended, an error it reports
itself, a preemption) says BYE first.

Nothing half-written can pass for a checkpoint: Orbax writes a step into
`<step>.orbax-checkpoint-tmp` and renames it only once every process's part is on disk
(after a barrier that a dead process never reaches), and a resume ignores the rest.

After (same setup): the survivor exits within 0.1 s with status 75 and one line, whether
it was training or inside a save (checkpoint every step), with the watch; without it
(JAXTRAIN_PEER_WATCH=0), within 0.1 s from a step, but 67 s and an abort from a save.

Only partly covered: when process 0 itself dies, it takes the coordination service with
it, and every survivor's coordination client (C++) aborts its process (LOG(FATAL), then
a C++ stack; 0.1 s after the kill, exit -6, before this module). Our exit usually gets
there first: in 8 trials all survivors exited with 75 and the line, but in 3 of them the
client's LOG(FATAL) lines (7, no stack) came before it. JAX's client takes a
`missed_heartbeat_callback` that would replace that abort, but given a Python callable
jaxlib 0.10.2 aborts with `std::bad_cast` (it cannot hand the absl::Status to Python).
"""

import os
import re
import secrets
import selectors
import socket
import sys
import threading
import time

import jax
from absl import logging

from jaxtrain.errors import chain
from jaxtrain.rundir import layout

# Exit status of a process that stopped because a peer was lost: EX_TEMPFAIL ("temporary
# failure; retrying may succeed"), which is what running all processes again does.
EXIT_STATUS = 75

# Seen on the survivor when a peer is SIGKILLed (jax 0.10.2, gloo on CPU), in the step
# in flight or the next one (JaxRuntimeError):
#   UNKNOWN: Gloo all-reduce failed: [.../gloo/transport/tcp/pair.cc:547] Connection closed by peer [127.0.0.1]:15283
#   UNKNOWN: Gloo all-reduce failed: [.../gloo/transport/tcp/pair.cc:538] Read error [127.0.0.1]:14762: Connection reset by peer
# and, from the coordination service, once a peer's heartbeats time out (100 s), e.g. in
# Orbax's barrier (as the cause of its `TimeoutError: Timed out while waiting for
# async_write_complete barrier.`) or in JAX's shutdown barrier:
#   INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat timeout. ...
#   UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats): ...
#   UNAVAILABLE: Failed to send RPC to coordination service. ... Socket closed   (process 0 gone)
_GLOO = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused")
_COORDINATION = ("heartbeat timeout", "tasks are unhealthy", "task is set to ERROR", "Barrier failed because",
                 "Failed to send RPC to coordination service")

_KEY = "jaxtrain/peer_watch"
_EXIT_LOCK = threading.Lock()
_watch = None  # The PeerWatch of this process, once started.


def lost_peer(error):
  """A short account (one line) of how `error` shows that a peer process is gone, or None.

  Only with several processes, and only from JAX's runtime errors: a gloo collective whose
  connection to a peer closed, or the coordination service reporting a dead task."""
  if error is None or jax.process_count() == 1:
    return None
  for e in chain(error):
    if type(e).__name__ not in ("JaxRuntimeError", "XlaRuntimeError"):
      continue
    text = str(e)
    if ("Gloo" in text and any(m in text for m in _GLOO)) or any(m in text for m in _COORDINATION):
      line = next((line.strip() for line in text.splitlines() if line.strip()), "")
      line = re.sub(r"^[A-Z_]+: ", "", line)  # The status code ('UNKNOWN: ').
      return re.sub(r"\[[^\]]*\.cc:\d+\] ", "", line)[:200]  # The C++ source location.
  return None


def exit_lost(evidence, workdir=None):
  """Prints the one line, tells the other survivors, and ends this process at once
  (`os._exit`: no atexit hooks, so no shutdown barrier waiting for the dead peer)."""
  with _EXIT_LOCK:  # A second caller (the watch and the main thread at once) waits for the exit.
    if _watch is not None:
      _watch._tell_others(evidence)  # pylint: disable=protected-access
      workdir = workdir or _watch.workdir
    n = jax.process_count()
    print(f"error: {message(evidence, n, workdir)}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_STATUS)  # pylint: disable=protected-access


def message(evidence, num_processes, workdir):
  where = layout.checkpoints(workdir) if workdir else None
  newest = layout.newest_complete_step(workdir) if workdir else None
  again = f"run all {num_processes} processes again"
  if newest is None:
    resume = f"{again} to start over (no checkpoint was complete yet)"
  else:
    resume = f"the checkpoints in {where} are intact: {again} to resume from checkpoint {newest}"
  return f"lost a peer process of this {num_processes}-process run ({evidence}); {resume}"


class PeerWatch:
  """Notices a peer that dies, wherever this process is (a step, a barrier, a save).

  Process 0 listens on a free port (published in JAX's key-value store with a random
  token); every other process connects to it and sends HELLO. A connection that closes
  without a BYE means that process died: process 0 then sends LOST to the others, waits
  (up to 5 s) until they are gone (its exit takes the coordination service down, which
  would make theirs abort), and exits; the others exit on LOST, or when process 0's
  connection closes. When anything fails here (a firewall, no key-value store), the run
  goes on without the watch, as before."""

  def __init__(self, workdir):
    self.workdir = workdir
    self._index = jax.process_index()
    self._conns = {}         # Process index -> socket (process 0: all others; others: {0: ...}).
    self._left = set()       # Processes that said BYE.
    self._leaving = False    # This process said BYE: closed connections are expected now.
    self._exiting = False    # exit_lost is waiting for the others: the thread keeps off the sockets.
    self._lock = threading.Lock()

  def start(self, timeout_s=120):
    global _watch
    if os.environ.get("JAXTRAIN_PEER_WATCH", "1") == "0":  # E.g. where process 0 takes no connections.
      return self
    try:
      from jax._src import distributed  # pylint: disable=import-outside-toplevel  (JAX's own client)
      client, address = distributed.global_state.client, distributed.global_state.coordinator_address
      host = address.rsplit(":", 1)[0].strip("[]")
      if self._index == 0:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = socket.create_server(("", 0), family=family, backlog=jax.process_count())
        token = secrets.token_hex(16)
        client.key_value_set(_KEY, f"{server.getsockname()[1]} {token}")
        target = self._serve
        args = (server, token)
      else:
        port, token = client.blocking_key_value_get(_KEY, timeout_s * 1000).split()
        conn = socket.create_connection((host, int(port)), timeout=30)
        _keepalive(conn)
        conn.sendall(f"HELLO {token} {self._index}\n".encode())
        conn.settimeout(None)
        self._conns[0] = conn
        target, args = self._follow, (conn,)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Not watching the other processes (%s: %s); a lost peer is then noticed only by JAX's "
                      "heartbeat timeout.", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
      return self
    threading.Thread(target=target, args=args, name="peer_watch", daemon=True).start()
    _watch = self
    return self

  def bye(self):
    """This process leaves on purpose (the run ended, or an error it reports itself)."""
    global _watch
    self._leaving = True
    with self._lock:
      for conn in self._conns.values():
        try:
          conn.sendall(b"BYE\n")
        except OSError:
          pass
    _watch = None

  # ---- Process 0 ---------------------------------------------------------------------

  def _serve(self, server, token):
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    pending = {}  # Connections that have not said HELLO yet -> bytes so far.
    while not self._exiting:
      for key, _ in selector.select():  # No timeout: the thread wakes only when a peer writes or goes.
        if self._exiting:
          return
        sock = key.fileobj
        if sock is server:
          conn, _ = server.accept()
          _keepalive(conn)
          pending[conn] = b""
          selector.register(conn, selectors.EVENT_READ)
          continue
        data = _recv(sock)
        if sock in pending:  # HELLO <token> <index>
          pending[sock] += data or b""
          if data and b"\n" not in pending[sock]:
            continue
          words = pending.pop(sock).decode(errors="replace").split()
          if len(words) == 3 and words[0] == "HELLO" and words[1] == token and words[2].isdigit():
            with self._lock:
              self._conns[int(words[2])] = sock
          else:  # Not one of ours.
            selector.unregister(sock)
            sock.close()
          continue
        peer = next((i for i, c in self._conns.items() if c is sock), None)
        lines = (data or b"").decode(errors="replace").splitlines()
        if any(line == "BYE" for line in lines):
          self._left.add(peer)
        lost = next((line[5:] for line in lines if line.startswith("LOST ")), None)
        if lost is not None:
          exit_lost(f"process {peer} reported: {lost}")
        if not data:  # Closed.
          selector.unregister(sock)
          if peer not in self._left and not self._leaving:
            exit_lost(f"process {peer} disconnected")

  def _tell_others(self, evidence):
    """Process 0: LOST to every other process, then wait until they have gone (up to 5 s);
    others: LOST to process 0, which tells the rest."""
    self._exiting = True
    with self._lock:
      conns = dict(self._conns)
    for conn in conns.values():
      try:
        conn.sendall(f"LOST {evidence}\n".encode())
      except OSError:
        pass
    if self._index != 0:
      return
    deadline = time.monotonic() + 5
    selector = selectors.DefaultSelector()
    for conn in conns.values():
      try:
        selector.register(conn, selectors.EVENT_READ)
      except (ValueError, KeyError, OSError):  # Already closed.
        pass
    while selector.get_map() and time.monotonic() < deadline:
      for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
        if not _recv(key.fileobj):
          selector.unregister(key.fileobj)

  # ---- Other processes -----------------------------------------------------------------

  def _follow(self, conn):
    buffer = b""
    while True:
      data = _recv(conn)
      if self._exiting:
        return
      buffer += data or b""
      lines = buffer.decode(errors="replace").split("\n")
      lost = next((line[5:] for line in lines if line.startswith("LOST ")), None)
      if lost is not None:
        exit_lost(lost)
      if "BYE" in lines:
        return  # Process 0 leaves on purpose; JAX's own shutdown takes over.
      if not data:
        if not self._leaving:
          exit_lost("process 0, the coordinator, disconnected")
        return


def _keepalive(sock):
  """TCP keepalive: an idle connection stays known to the firewalls in between (some drop
  idle ones silently), and a peer whose machine vanished (no FIN ever comes) is noticed
  after about 2 minutes, not never."""
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
  for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
    if hasattr(socket, option):  # Linux; elsewhere the system's defaults.
      sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _recv(sock):
  """What the peer sent; b'' once its connection is closed or broken (ECONNRESET)."""
  try:
    return sock.recv(4096)
  except OSError:
    return b""
