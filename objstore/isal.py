"""ISA-L's GF(2^8) kernels, through ctypes, for the erasure-code arithmetic zfec does one byte at a time.

zfec stays the reference and the fallback. A `Coder` takes the parity coefficients from zfec itself
(the parity of a unit block is its coefficient), so ISA-L computes byte for byte the parity zfec
would, and it proves it on random stripes before it is used: shards written with either read back
with either. ISA-L multiplies 32 bytes at a time with table lookups in vector registers; at 4+2
that encodes about 4.5 times faster than zfec on the development machine (benchmarks/codec_bench.py).

The library is found as the system's libisal (Debian: libisal2), else as the copy that pyeclib's
wheel ships (`pyeclib.libs/`). `OBJSTORE_ISAL=0` turns it off. Calls through ctypes release the GIL,
as zfec's do, so a codec can still be shared by every thread of a pool.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview

_CACHE_MAX = 256  # decode matrices kept per coder: one per (blocks present, blocks wanted) pattern

_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


def _candidates() -> list[str]:
    paths = []
    system = ctypes.util.find_library("isal")
    if system:
        paths.append(system)
    spec = importlib.util.find_spec("pyeclib")  # finds the package without importing it
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent.parent / "pyeclib.libs"
        paths.extend(str(p) for p in sorted(bundled.glob("libisal*.so*")))
    return paths


def _open() -> ctypes.CDLL | None:
    if os.environ.get("OBJSTORE_ISAL", "1") == "0":
        return None
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            lib.ec_init_tables.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
            lib.ec_init_tables.restype = None
            lib.ec_encode_data.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                           ctypes.c_void_p, ctypes.c_void_p)
            lib.ec_encode_data.restype = None
            lib.gf_invert_matrix.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
            lib.gf_invert_matrix.restype = ctypes.c_int
            lib.gf_mul.argtypes = (ctypes.c_ubyte, ctypes.c_ubyte)
            lib.gf_mul.restype = ctypes.c_ubyte
        except (OSError, AttributeError):  # not loadable, or a library without the EC functions
            continue
        log.debug("ISA-L loaded from %s", path)
        return lib
    return None


_lib: ctypes.CDLL | None = None
_looked = False


def library() -> ctypes.CDLL | None:
    """ISA-L, loaded once; None when it is missing or turned off."""
    global _lib, _looked
    if not _looked:
        _lib, _looked = _open(), True
    return _lib


def _address(buf: Buffer, keep: list[object]) -> int:
    """The address of a buffer's first byte; read-only views other than bytes are copied first."""
    if isinstance(buf, memoryview) and buf.readonly:
        buf = buf.obj if isinstance(buf.obj, bytes) and len(buf.obj) == buf.nbytes else bytes(buf)
    if isinstance(buf, bytes):
        keep.append(buf)
        return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value or 0
    view = (ctypes.c_char * len(buf)).from_buffer(buf)
    keep.append(view)
    return ctypes.addressof(view)


class Matrix:
    """A rows x k matrix over GF(2^8), expanded once into ISA-L's multiplication tables."""

    def __init__(self, lib: ctypes.CDLL, k: int, rows: Sequence[Sequence[int]]) -> None:
        self._lib, self.k, self.rows = lib, k, len(rows)
        coefficients = bytes(c for row in rows for c in row)
        if len(coefficients) != k * self.rows:
            raise ValueError(f"a {self.rows} x {k} matrix needs {k * self.rows} coefficients")
        self._tables = ctypes.create_string_buffer(32 * k * max(self.rows, 1))
        if self.rows:
            lib.ec_init_tables(k, self.rows, coefficients, self._tables)

    def apply(self, sources: Sequence[Buffer]) -> list[bytes]:
        """Row i of the answer is the sum over j of coefficient (i, j) times sources[j], byte by byte."""
        if len(sources) != self.k:
            raise ValueError(f"{len(sources)} sources for a matrix of {self.k} columns")
        n = len(sources[0])
        if any(len(s) != n for s in sources):
            raise ValueError("sources differ in length")
        if n == 0 or not self.rows:
            return [b""] * self.rows
        keep: list[object] = []
        src = (ctypes.c_void_p * self.k)(*[_address(s, keep) for s in sources])
        # Fresh bytes objects that nothing else sees yet, written once by ISA-L: no zeroing first.
        outs: list[bytes] = [_new_bytes(None, n) for _ in range(self.rows)]
        dst = (ctypes.c_void_p * self.rows)(*[_address(o, keep) for o in outs])
        self._lib.ec_encode_data(n, self.k, self.rows, self._tables, src, dst)
        return outs


class Coder:
    """Encode, decode and rebuild for one k+m profile with zfec's coefficients and ISA-L's speed."""

    def __init__(self, lib: ctypes.CDLL, k: int, width: int, parity_rows: Sequence[Sequence[int]]) -> None:
        if len(parity_rows) != width - k:
            raise ValueError(f"{len(parity_rows)} parity rows for {k}+{width - k}")
        self._lib, self.k, self.width = lib, k, width
        self._generator = [[int(i == j) for j in range(k)] for i in range(k)] + [list(r) for r in parity_rows]
        self._parity = Matrix(lib, k, parity_rows)
        self._cache: dict[tuple[tuple[int, ...], tuple[int, ...]], Matrix] = {}
        self._lock = threading.Lock()

    @classmethod
    def like(cls, k: int, width: int, zfec_encode: Callable[[list[bytes]], list[bytes]]) -> Coder | None:
        """A coder that computes what `zfec_encode` (a zfec Encoder's encode) does, or None.

        None when ISA-L is missing, or when its answers differ from zfec's on random stripes.
        """
        lib = library()
        if lib is None or not 1 <= k < width <= 256:
            return None
        units = [zfec_encode([b"\x01" if i == j else b"\x00" for i in range(k)]) for j in range(k)]
        coder = cls(lib, k, width, [[units[j][k + i][0] for j in range(k)] for i in range(width - k)])
        if not coder._agrees(zfec_encode):
            log.warning("ISA-L parity differs from zfec's for %d+%d; using zfec", k, width - k)
            return None
        return coder

    def _agrees(self, zfec_encode: Callable[[list[bytes]], list[bytes]]) -> bool:
        for n in (1, 31, 32, 33, 4099):  # below, at and past ISA-L's vector width
            data = [secrets.token_bytes(n) for _ in range(self.k)]
            blocks = zfec_encode(data)
            if self.parity(data) != blocks[self.k:]:
                return False
            present = list(range(self.width - self.k, self.width))  # as many parity blocks in as can be
            if self.rows({i: blocks[i] for i in present}, list(range(self.width))) != {
                    i: blocks[i] for i in range(self.width)}:
                return False
        return True

    def parity(self, data: Sequence[Buffer]) -> list[bytes]:
        """The m parity blocks of k data blocks of one length."""
        return self._parity.apply(data)

    def rows(self, blocks: dict[int, Buffer], want: Sequence[int]) -> dict[int, bytes]:
        """Blocks `want` of a stripe from `blocks` (index -> block), of which the k lowest indexes are used."""
        chosen = tuple(sorted(blocks)[:self.k])
        if len(chosen) < self.k:
            raise ValueError(f"need {self.k} blocks, got {len(chosen)}")
        wanted = tuple(dict.fromkeys(want))
        matrix = self._cache.get((chosen, wanted))
        if matrix is None:
            matrix = self._decoder(chosen, wanted)
            with self._lock:  # the threads of a pool share the cache
                if len(self._cache) >= _CACHE_MAX:
                    del self._cache[next(iter(self._cache))]
                self._cache[(chosen, wanted)] = matrix
        return dict(zip(wanted, matrix.apply([blocks[i] for i in chosen]), strict=True))

    def _decoder(self, chosen: tuple[int, ...], wanted: tuple[int, ...]) -> Matrix:
        # Block i is generator row i times the data blocks, so the data are inverse(G[chosen]) times
        # the chosen blocks, and block w is G[w] times that inverse times them.
        k, mul = self.k, self._lib.gf_mul
        # gf_invert_matrix works in place on its input: a buffer of our own, never a bytes object.
        square = ctypes.create_string_buffer(bytes(c for i in chosen for c in self._generator[i]), k * k)
        inverse = ctypes.create_string_buffer(k * k)
        if self._lib.gf_invert_matrix(square, inverse, k) != 0:
            raise ValueError(f"blocks {list(chosen)} do not determine the stripe")
        inv = inverse.raw
        rows = []
        for w in wanted:
            g = self._generator[w]
            row = []
            for j in range(k):
                acc = 0
                for t in range(k):
                    if g[t]:
                        acc ^= mul(g[t], inv[t * k + j])
                row.append(acc)
            rows.append(row)
        return Matrix(self._lib, k, rows)
