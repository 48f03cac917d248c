"""Wire protocol: message tags, the one message layout every tag uses, and envelopes.

Every message is a contiguous run of bytes (no pickling), 8-byte aligned:

    header  int64[8]        see ``H`` for the field order (the tag is field ``H.TAG``)
    keys    int64[n]        table keys the message is about
    pos     int64[n]        positions of those keys in the origin's request (for replies)
    rows    float32[m, w]   only for tags in ``CARRIES_ROWS`` (w = the table's row width):
                            rows of the first m <= n keys (m is field ``H.M``).
                            m < n only for SYNC (the first m replicas were written since
                            the last round; the others only ask whether the row changed)
                            and SYNC_REPLY (rows of the keys whose row changed)
    padding                 to a multiple of 8 bytes

An *envelope* is what travels as one MPI message: ``int64[2]`` (message count, send time
in ns of ``time.monotonic_ns``, for the emulated network) followed by its messages. A rank
sends at most one envelope per destination per PS call or handled envelope (coalescing:
the per-message cost of MPI and of Python's call overhead is paid once), so the message
counts in ``stats()`` count envelopes.

MPI keeps messages between one pair of ranks in order when they match the same receive;
the transport receives with ANY_TAG, so per-pair FIFO holds, and messages inside an
envelope are handled in the order they were sent.
"""

from __future__ import annotations

import enum

import numpy as np


class Tag(enum.IntEnum):
    """Message types. Requests go to the (believed) owner and may be forwarded."""

    PULL = 1        # origin -> owner: read rows                 -> PULL_REPLY
    PULL_REPLY = 2  # owner -> origin: rows of pulled keys (pos = request positions)
    PUSH = 3        # origin -> owner: add rows (deltas)         -> WRITE_ACK
    SET = 4         # origin -> owner: overwrite rows            -> WRITE_ACK
    WRITE_ACK = 5   # owner -> origin: these keys were applied
    LOCALIZE = 6    # requester -> home: move keys to requester (aux = requester)
    RELOCATE = 7    # home -> owner it knows: hand keys over to aux; forwarded like a
                    #   PULL (hints, home) if the keys moved on meanwhile
    TRANSFER = 8    # old owner -> new owner: the rows (req/origin of the localize or
                    #   intent); pos = transfer_pos(relocation counter, replica holders)
    SYNC = 9        # replica -> owner: add the delta rows of the first m keys; pos = the
                    #   stamp of the row each replica copies            -> SYNC_REPLY
    SYNC_REPLY = 10 # owner -> replica: fresh rows of the first m keys (those whose stamp
                    #   differs); pos = the owner's stamps
    INTENT = 11     # rank -> owner: will use these keys soon -> REPLICA, or the owner
                    #   hands the keys over at once (TRANSFER, and OWNER to the home)
    REPLICA = 12    # owner -> rank: rows for a new replica (others use the keys too);
                    #   pos = the rows' stamps
    GRANT = 13      # owner -> rank: the answer to an INTENT that both hands keys over and
                    #   copies others: the first AUX keys as a TRANSFER, the rest as a REPLICA
    DROP = 14       # replica -> owner: residual delta of a dropped replica -> WRITE_ACK
    OWNER = 15      # old owner -> home: new owners of keys; pos = versioned(relocation
                    #   counter, new owner); the home ignores updates older than the newest
                    #   it has seen. Batched: sent every 2 ms at most, and at clock ticks.


REQUESTS = frozenset({Tag.PULL, Tag.PUSH, Tag.SET, Tag.RELOCATE, Tag.SYNC, Tag.INTENT,
                      Tag.DROP})
CARRIES_ROWS = frozenset({Tag.PULL_REPLY, Tag.PUSH, Tag.SET, Tag.TRANSFER, Tag.SYNC,
                          Tag.SYNC_REPLY, Tag.REPLICA, Tag.GRANT, Tag.DROP})


class H(enum.IntEnum):
    """Header fields (int64 each)."""

    TABLE = 0   # table index (sorted table names)
    REQ = 1     # request id at the origin
    ORIGIN = 2  # rank waiting for the reply
    N = 3       # number of keys
    HOPS = 4    # times this request was forwarded
    AUX = 5     # tag-specific: new owner for LOCALIZE / RELOCATE, keys moved for GRANT
    TAG = 6     # the message's Tag
    M = 7       # rows carried (the first M keys' rows; 0 for tags without rows)


HEADER_WORDS = len(H)
HEADER_BYTES = 8 * HEADER_WORDS
ENVELOPE_WORDS = 2  # message count, send time (ns)


_LOW_BITS = 16  # replica holders (int16 at the owner) or a rank (< 2**16 ranks)


def versioned(version: np.ndarray, low: np.ndarray) -> np.ndarray:
    """The per-key ``pos`` word of TRANSFER (relocation counter, replica holders) and
    OWNER (relocation counter, new owner)."""
    return (version.astype(np.int64) << _LOW_BITS) | low.astype(np.int64)


def split_versioned(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(relocation counter, low part) from a ``versioned`` word."""
    return pos >> _LOW_BITS, pos & ((1 << _LOW_BITS) - 1)


def message_bytes(n: int, m: int, width: int) -> int:
    """Bytes of one message with n keys and m rows of ``width`` floats (8-byte aligned)."""
    return HEADER_BYTES + 16 * n + ((4 * m * width + 7) & ~7)


def pack(table: int, req: int, origin: int, keys: np.ndarray, pos: np.ndarray,
         rows: np.ndarray | None = None, *, hops: int = 0, aux: int = -1,
         tag: int = 0) -> np.ndarray:
    """One message buffer (uint8) from its parts; copies them once."""
    n = len(keys)
    m = 0 if rows is None else len(rows)
    width = rows.shape[1] if m else 0
    end = HEADER_BYTES + 16 * n
    buf = np.empty(message_bytes(n, m, width), np.uint8)
    words = buf[:end].view(np.int64)
    words[:HEADER_WORDS] = (table, req, origin, n, hops, aux, tag, m)
    words[HEADER_WORDS:HEADER_WORDS + n] = keys
    words[HEADER_WORDS + n:] = pos
    if m:
        buf[end:end + 4 * m * width].view(np.float32).reshape(m, width)[...] = rows
    return buf


def unpack(buf: np.ndarray, width: int | None):
    """Split one message into (header, keys, pos, rows|None); views, no copies.
    ``rows`` (for ``width`` not None) has the rows the message carries: m <= n."""
    header = buf[:HEADER_BYTES].view(np.int64)
    n, m = int(header[H.N]), int(header[H.M])
    k0, k1 = HEADER_BYTES, HEADER_BYTES + 8 * n
    keys = buf[k0:k1].view(np.int64)
    pos = buf[k1:k1 + 8 * n].view(np.int64)
    rows = None
    if width is not None:
        r0 = k1 + 8 * n
        rows = buf[r0:r0 + 4 * m * width].view(np.float32).reshape(m, width)
    return header, keys, pos, rows


def envelope(parts: list[np.ndarray], send_ns: int) -> np.ndarray:
    """One MPI message holding the messages ``parts`` (packed buffers), in order."""
    buf = np.empty(8 * ENVELOPE_WORDS + sum(len(p) for p in parts), np.uint8)
    buf[:8 * ENVELOPE_WORDS].view(np.int64)[:] = (len(parts), send_ns)
    at = 8 * ENVELOPE_WORDS
    for p in parts:
        buf[at:at + len(p)] = p
        at += len(p)
    return buf


def envelope_send_ns(buf: np.ndarray) -> int:
    return int(buf[8:16].view(np.int64)[0])


def messages(buf: np.ndarray, widths: list[int]):
    """The messages of an envelope: yields (header as a list, message buffer).
    ``widths[table index]``: the row width of each table."""
    count = int(buf[:8].view(np.int64)[0])
    at = 8 * ENVELOPE_WORDS
    for _ in range(count):
        header = buf[at:at + HEADER_BYTES].view(np.int64).tolist()
        size = message_bytes(header[H.N], header[H.M], widths[header[H.TABLE]])
        yield header, buf[at:at + size]
        at += size
