"""A deterministic byte stream shared by the backends and the tests.

The stream repeats a block of PERIOD bytes. PERIOD is prime and not a power
of two, so a dropped, duplicated or reordered piece of any power-of-two size
changes the bytes at that offset and is caught by a plain comparison.
"""
import hashlib

PERIOD = 65521
PIECE = 1 << 16          # what writers send at a time
MAX_SLICE = 1 << 20      # the longest slice pattern() hands out


def _make_block():
    out = bytearray()
    i = 0
    while len(out) < PERIOD:
        out += hashlib.sha256(b"gatehouse-pattern-%d" % i).digest()
        i += 1
    return bytes(out[:PERIOD])


BLOCK = _make_block()
_TILE = BLOCK * (MAX_SLICE // PERIOD + 2)


def pattern(offset, length):
    """The bytes of the stream at [offset, offset + length); length <= MAX_SLICE."""
    if length > MAX_SLICE:
        raise ValueError("pattern slice too long")
    start = offset % PERIOD
    return _TILE[start:start + length]


def pattern_pieces(size, piece=PIECE):
    """Yields the first size bytes of the stream in pieces of at most piece bytes."""
    off = 0
    while off < size:
        n = min(piece, size - off)
        yield pattern(off, n)
        off += n


def pattern_sha256(size):
    h = hashlib.sha256()
    for p in pattern_pieces(size, MAX_SLICE):
        h.update(p)
    return h.hexdigest()
