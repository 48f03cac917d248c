"""What-if: replay an access trace for every technique on a simulated network and rank count.

An *estimate*, not a measurement: it counts the bytes and messages the jaxps protocol would send
for the recorded accesses and turns them into time with a simple network model. It shows how
the techniques would compare on a cluster this machine cannot provide (issue 5, item 5).
See docs/whatif.md for the full model; the main assumptions:

* Redistribution: global batch i (recorded clock t, rank r -> i = t * R + r) goes to simulated
  rank i % N at simulated clock i // N. A batch's accesses are its unique keys per table.
* Messages (jaxps/_src/protocol.py): a 64-byte header each, and every message carries 16 bytes
  per key (int64 key + int64 position), replies and acks included; messages with rows add
  ``row_bytes`` per key (parameter + optimizer state). One message per (operation, source,
  destination) and clock. Pull = request (16/key) + reply (row+16/key); push = row+16 per key +
  an ack (16/key); relocation = requester -> home (16/key) -> old owner (16/key) -> requester
  (row+16/key), hops on the same rank are free; replica creation = intent (16/key) + replica
  (row+16/key); replica sync = delta up + fresh row down (row+16/key each).
* classic: key k lives on k % N; every other access is a pull (on demand) and a push.
* replication: every access local; each clock every rank sends the deltas of the keys it touched
  to their owner (k % N), and each owner sends the fresh rows of every key touched by anyone
  that clock to every other rank. ``sync="held"`` instead syncs every replica every clock (the
  whole table per rank and clock: an upper bound). jaxps' sync round (``start_sync`` in
  jaxps/_src/replication.py) sends, per held replica, its key and stamp (16 bytes), a delta
  only for the replicas written since the last round, and gets back a fresh row only where the
  owner's row changed: the rows of ``touched``, plus 32 bytes per held key and round that no
  mode counts.
* relocation (Lapse): a key moves to the rank that accesses it; the move is signalled one clock
  ahead (intent), so it runs during the previous clock's compute. Ranks that want the same key
  at the same clock: the current owner keeps it if it is one of them, else one of them (rotating)
  gets it and the others pull/push it remotely.
* nups: the ``hot_fraction`` most accessed keys (over the whole trace) are replicated on every
  rank; touched hot keys (``sync="held"``: all hot keys) sync with their home every clock; all
  other keys as relocation.
* adaptive (AdaPS): clocks are cut into windows of ``window`` clocks (the intent horizon).
  A key one rank accesses in a window relocates to it (once; it stays until another rank wants
  it); a key several ranks access is replicated on each of them but the owner, from its first
  to its last access in the window (the intent), syncing every clock in between, and dropped
  (residual delta + ack) after the last access. Creation and relocation are signalled one
  clock ahead.
* Actions for clock 0 cannot be signalled ahead: they run on demand and those accesses count as
  remote. Otherwise, an access is local when its key is owned or replicated on the rank once the
  actions signalled for that clock have run ("local fraction"); an action that did not finish in
  time shows as exposed time, not as a remote access.
* Time: per clock and rank, two parts, each ``latency x message rounds + max(bytes sent, bytes
  received) / bandwidth`` (full duplex; parallel messages share one round): *on demand* (pulls,
  actions at clock 0) blocks the step; *background* (actions signalled ahead, pushes, syncs,
  drops) overlaps the compute of that clock. Clock time = max over ranks of
  ``on_demand + max(compute, background)``; exposed communication = clock time - compute. Ranks
  advance in lockstep (bounded staleness), hence the max. CPU cost of (de)serialization,
  forwarding via stale location hints, contention beyond a rank's own link, and stragglers
  are not modelled.

Usage:
    python -m train.whatif TRACE_PREFIX --ranks 8,16,64 --bandwidth 10e9 --latency 20e-6 \
        --compute-ms 10 --techniques all --json OUT.json
    python -m train.whatif --synthetic --ranks 8,16,64        # on a generated trace
"""

from train.whatif.ledger import HEADER_BYTES, KEY_BYTES, TECHNIQUES, Estimate, Network
from train.whatif.replay import compare, markdown, replay

__all__ = ["HEADER_BYTES", "KEY_BYTES", "TECHNIQUES", "Estimate", "Network", "compare", "main",
           "markdown", "replay"]


def main(argv=None) -> None:
    """The command line (``python -m train.whatif``); see ``train/whatif/__main__.py``."""
    from train.whatif.__main__ import main as cli
    cli(argv)
