"""Shared-memory ring buffers: one writer, any number of readers, nobody waits.

Lifecycle (the same for every ring):
- The *owner* (the main process of `stream.run`) calls `FrameRing.create(...)`; it is the
  only one that unlinks, on every exit path (`unlink()`, also from `close()` of the owner).
- The *writer* (a capture process) and the *readers* (inference, preview, benchmark)
  call `FrameRing.attach(name)` and `close()` when done. The writer calls
  `close_writer()` at end of stream; readers waiting for newer data then get
  `EndOfStream`.

Consistency: every slot has a sequence word. The writer sets it to -1, copies the
frame, writes the timestamp, then stores the frame's sequence number; a reader checks
the word before and after its copy and raises `FrameLost` when it changed (the slot
was overwritten while being read: a torn read never reaches the caller). Readers that
read frames in place (`FrameRing.frames`, e.g. the preprocessing) make the same two
checks themselves with `FrameRing.check`, before and after. 8-byte aligned stores of
int64 are atomic on the platforms we run on, and x86-64's total store order keeps the
writer's stores in program order for the readers.

Drop policy: the writer always overwrites the oldest slot. A slow reader loses frames
and sees it as a jump in sequence numbers.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import re
import secrets
import time
from multiprocessing import shared_memory

import numpy as np

from stream.errors import EndOfStream, FrameLost, RingError

#: Every segment this project creates starts with this prefix (the start-up sweep of
#: stale segments must recognise ours and never touch anyone else's).
SEGMENT_PREFIX = "avstream_"

_MAGIC = 0x41565346524D0002  # "AVSFRM" + layout version 2
# Header words (int64).
_H_MAGIC, _H_SLOTS, _H_HEIGHT, _H_WIDTH, _H_CHANNELS, _H_NEXT_SEQ, _H_CLOSED, _H_WRITER_PID = range(
    8
)
_HEADER_WORDS = 16
_META_COLS = 3
_ALIGN = 64


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


_SEGMENT_NAME = re.compile(rf"^{SEGMENT_PREFIX}(frames|audio)_(\d+)_[0-9a-f]{{6}}$")


def sweep_stale_segments(shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink segments of this project's naming whose creating process is gone.

    What a crash of everything (owner and resource tracker alike) can leave behind.
    Only names this module makes are touched, and only when the creator's pid no
    longer runs; segments of live runs and of anyone else stay. Returns what it removed.
    """
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return []
    removed = []
    for name in names:
        m = _SEGMENT_NAME.match(name)
        if m is None:
            continue
        try:
            os.kill(int(m[2]), 0)
            continue  # the creator runs: not stale
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's live process
        try:
            os.unlink(os.path.join(shm_dir, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def new_segment_name(kind: str) -> str:
    """A fresh segment name of this project's own naming (short enough for macOS's 31)."""
    return f"{SEGMENT_PREFIX}{kind}_{os.getpid()}_{secrets.token_hex(3)}"


@dataclasses.dataclass(frozen=True)
class Frames:
    """Frames of one geometry in a flat uint8 buffer: frame i is `height` rows of
    `width` × 3 bytes (BGR) from byte `offsets[i]` on. A capture ring's slots read in
    place, or a (T, H, W, 3) array (`Frames.of`)."""

    buffer: np.ndarray  # (n,) uint8
    offsets: np.ndarray  # (T,) int64
    height: int
    width: int

    def __post_init__(self):
        object.__setattr__(self, "offsets", np.ascontiguousarray(self.offsets, dtype=np.int64))
        if (
            self.buffer.ndim != 1
            or self.buffer.dtype != np.uint8
            or not self.buffer.flags.c_contiguous
        ):
            raise ValueError("Frames.buffer must be a contiguous 1-D uint8 array")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"bad frame size {self.width}x{self.height}")
        if len(self.offsets) and (
            self.offsets.min() < 0
            or self.offsets.max() + self.height * self.width * 3 > len(self.buffer)
        ):
            raise ValueError("a frame offset lies outside the buffer")

    @classmethod
    def of(cls, frames: np.ndarray) -> Frames:
        """The frames of a (T, H, W, 3) uint8 array (copied only when not contiguous)."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}"
            )
        t, h, w, _ = frames.shape
        return cls(
            np.ascontiguousarray(frames).reshape(-1),
            np.arange(t, dtype=np.int64) * (h * w * 3),
            h,
            w,
        )

    def __len__(self) -> int:
        return len(self.offsets)


class _Segment:
    """One shared-memory segment: the owner unlinks it, everyone else only closes."""

    def __init__(self, shm: shared_memory.SharedMemory, *, owner: bool):
        self._shm = shm
        self.name = shm.name
        self.owner = owner
        self._unlinked = False

    def _release_views(self) -> None:
        """Drop every numpy view of the buffer (close() fails while views exist)."""
        raise NotImplementedError

    @staticmethod
    def _map_in(shm: shared_memory.SharedMemory) -> None:
        """Map every page of the segment into this process now (one read per page).

        Otherwise each first touch faults: a writer's first lap through a frame ring took a
        page fault per 4 KiB page (225 for a 640×480 frame), several times the cost of the
        copy itself, and a reader's first windows paid the same. The owner also allocates
        the pages (`_allocate`)."""
        page = mmap.PAGESIZE
        int(np.frombuffer(shm.buf, dtype=np.uint8)[::page].sum())

    @staticmethod
    def _allocate(shm: shared_memory.SharedMemory) -> None:
        """Owner: write every page once, so that the memory exists from creation on: a
        /dev/shm without room for it shows at start-up (`stream.run` checks the space
        first), not as SIGBUS in a capture process mid-run."""
        np.frombuffer(shm.buf, dtype=np.uint8).fill(0)

    def close(self) -> None:
        """Detach; the owner also unlinks. Safe to call twice."""
        if self._shm is None:
            return
        self._release_views()
        shm, self._shm = self._shm, None
        shm.close()
        if self.owner and not self._unlinked:
            self._unlinked = True
            try:
                shm.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FrameRing(_Segment):
    """Fixed slots of H×W×C uint8 frames plus (seq, t_capture_ns) in shared memory."""

    def __init__(self, shm: shared_memory.SharedMemory, *, owner: bool):
        super().__init__(shm, owner=owner)
        self._map_in(shm)
        header = np.ndarray((_HEADER_WORDS,), dtype=np.int64, buffer=shm.buf)
        if int(header[_H_MAGIC]) != _MAGIC:
            raise RingError(f"shared memory {shm.name!r} is not a frame ring of this version")
        self.slots = int(header[_H_SLOTS])
        self.shape = (int(header[_H_HEIGHT]), int(header[_H_WIDTH]), int(header[_H_CHANNELS]))
        self._header = header
        meta_off = _aligned(_HEADER_WORDS * 8)
        # (slots, 3): the sequence word, t_capture_ns, and how long the write took (ns).
        self._meta = np.ndarray(
            (self.slots, _META_COLS), dtype=np.int64, buffer=shm.buf, offset=meta_off
        )
        data_off = _aligned(meta_off + self.slots * _META_COLS * 8)
        self._slot_bytes = _aligned(int(np.prod(self.shape)))
        # All slots as one flat array, for readers that read frames in place (`buffer`).
        self._buffer = np.ndarray(
            (self.slots * self._slot_bytes,), dtype=np.uint8, buffer=shm.buf, offset=data_off
        )
        self._data = [
            self._buffer[
                i * self._slot_bytes : i * self._slot_bytes + int(np.prod(self.shape))
            ].reshape(self.shape)
            for i in range(self.slots)
        ]

    # -- lifecycle -------------------------------------------------------------------

    @staticmethod
    def nbytes(slots: int, height: int, width: int, channels: int = 3) -> int:
        """Size of the segment that `create` makes for these dimensions."""
        meta_off = _aligned(_HEADER_WORDS * 8)
        data_off = _aligned(meta_off + slots * _META_COLS * 8)
        return data_off + slots * _aligned(height * width * channels)

    @classmethod
    def create(
        cls, slots: int, height: int, width: int, channels: int = 3, *, name: str | None = None
    ) -> FrameRing:
        """Create and own a new ring. Only the owner unlinks it."""
        if slots < 2 or height <= 0 or width <= 0 or channels <= 0:
            raise ValueError(f"bad ring dimensions: slots={slots} {height}x{width}x{channels}")
        size = cls.nbytes(slots, height, width, channels)
        shm = shared_memory.SharedMemory(
            name=name or new_segment_name("frames"), create=True, size=size
        )
        cls._allocate(shm)
        header = np.ndarray((_HEADER_WORDS,), dtype=np.int64, buffer=shm.buf)
        header[:] = 0
        header[_H_SLOTS], header[_H_HEIGHT], header[_H_WIDTH], header[_H_CHANNELS] = (
            slots,
            height,
            width,
            channels,
        )
        meta = np.ndarray(
            (slots, _META_COLS), dtype=np.int64, buffer=shm.buf, offset=_aligned(_HEADER_WORDS * 8)
        )
        meta[:, 0] = -1
        meta[:, 1:] = 0
        del meta
        header[_H_MAGIC] = _MAGIC  # last: the ring is valid from here on
        del header
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> FrameRing:
        """Attach to an existing ring as its writer or a reader."""
        try:
            shm = shared_memory.SharedMemory(name=name, create=False)
        except FileNotFoundError:
            raise RingError(f"frame ring {name!r} does not exist (its owner has exited)") from None
        return cls(shm, owner=False)

    def _release_views(self) -> None:
        self._header = self._meta = self._buffer = None
        self._data = []

    # -- writer ----------------------------------------------------------------------

    def write(self, frame: np.ndarray, t_ns: int) -> int:
        """Copy one frame into the oldest slot; never waits. Returns its sequence number."""
        if frame.shape != self.shape or frame.dtype != np.uint8:
            raise ValueError(
                f"frame {frame.shape} {frame.dtype} does not fit ring {self.shape} uint8"
            )
        started = time.perf_counter_ns()
        seq = int(self._header[_H_NEXT_SEQ])
        slot = seq % self.slots
        meta = self._meta[slot]
        meta[0] = -1  # readers of the old frame in this slot will see the change
        np.copyto(self._data[slot], frame)
        meta[1] = t_ns
        meta[2] = time.perf_counter_ns() - started
        meta[0] = seq
        self._header[_H_NEXT_SEQ] = seq + 1
        return seq

    def close_writer(self) -> None:
        """Mark end of stream: readers waiting for newer frames get `EndOfStream`."""
        self._header[_H_CLOSED] = 1

    # -- readers ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return bool(self._header[_H_CLOSED])

    @property
    def next_seq(self) -> int:
        """Sequence number the next frame will get (= frames written so far)."""
        return int(self._header[_H_NEXT_SEQ])

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(seqs, t_ns) of the frames currently held, oldest first.

        A copy of the slot table taken without locking: a pair may be mid-update, which
        `read` then detects. Use it to choose frames, then `read` them.
        """
        meta = self._table()
        return meta[:, 0], meta[:, 1]

    def write_times_ns(self) -> np.ndarray:
        """How long the writes of the frames currently held took, oldest first."""
        return self._table()[:, 2]

    def _table(self) -> np.ndarray:
        meta = self._meta.copy()
        meta = meta[meta[:, 0] >= 0]
        return meta[np.argsort(meta[:, 0], kind="stable")]

    def read(self, seq: int, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Copy frame `seq` (into `out` when given) and return (frame, t_capture_ns).

        Raises `FrameLost` when the frame is no longer (or not yet) in the ring, or
        was overwritten during the copy.
        """
        slot = seq % self.slots
        meta = self._meta[slot]
        if int(meta[0]) != seq:
            raise FrameLost(f"frame {seq} is not in the ring (newest is {self.next_seq - 1})")
        t_ns = int(meta[1])
        if out is None:
            out = self._data[slot].copy()
        else:
            np.copyto(out, self._data[slot])
        if int(meta[0]) != seq:
            raise FrameLost(f"frame {seq} was overwritten while being read")
        return out, t_ns

    # In place: no copy, for readers that consume a frame where it lies (the
    # preprocessing reads only the pixels it needs). The same check as `read`, split in two:
    # `check` the frames before reading them and again after; a frame that changed between
    # the two was (being) overwritten and what was read of it must be discarded.

    @property
    def buffer(self) -> np.ndarray:
        """All slots as one flat uint8 array; frame `seq` starts at `offset(seq)`."""
        return self._buffer

    def frames(self, seqs: np.ndarray) -> Frames:
        """Frames `seqs` where they lie in the ring (`check` them before and after use)."""
        if self.shape[2] != 3:
            raise RingError(f"frames in place need 3 channels; this ring has {self.shape[2]}")
        offsets = (np.asarray(seqs, dtype=np.int64) % self.slots) * self._slot_bytes
        return Frames(self._buffer, offsets, self.shape[0], self.shape[1])

    def check(self, seqs: np.ndarray) -> None:
        """Raise `FrameLost` unless every frame of `seqs` is (still) in its slot."""
        seqs = np.asarray(seqs, dtype=np.int64)
        held = self._meta[seqs % self.slots, 0]
        if (held != seqs).any():
            lost = int(seqs[held != seqs][0])
            raise FrameLost(f"frame {lost} is not in the ring (newest is {self.next_seq - 1})")

    def read_next(
        self, after_seq: int, timeout: float = 1.0, out: np.ndarray | None = None
    ) -> tuple[int, np.ndarray, int]:
        """The oldest frame newer than `after_seq`: (seq, frame, t_ns).

        A reader that fell behind gets the oldest frame still held, so `seq` jumps by
        more than one: that is how it learns what it lost. Waits up to `timeout`
        seconds (raises `TimeoutError`), and raises `EndOfStream` once the writer has
        closed and nothing newer is left.
        """
        deadline = time.monotonic() + timeout
        while True:
            newest = self.next_seq - 1
            if newest > after_seq:
                oldest_held = max(0, newest - self.slots + 1)
                seq = max(after_seq + 1, oldest_held)
                try:
                    frame, t_ns = self.read(seq, out)
                    return seq, frame, t_ns
                except FrameLost:
                    after_seq = seq  # overtaken during the copy: move on to newer frames
                    continue
            if self.closed:
                raise EndOfStream(f"frame ring {self.name!r} was closed by its writer")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no new frame in {timeout:.1f} s")
            time.sleep(0.001)


_AUDIO_MAGIC = 0x4156534155440001  # "AVSAUD" + layout version 1
# Header words (int64) of an AudioRing.
(
    _A_MAGIC,
    _A_CAPACITY,
    _A_RATE,
    _A_MAX_BLOCK,
    _A_COUNT,
    _A_VERSION,
    _A_ANCHOR_IDX,
    _A_ANCHOR_T,
    _A_CLOSED,
    _A_OVERFLOWS,
) = range(10)


class AudioRing(_Segment):
    """Mono float32 samples at a fixed rate in shared memory, with a running counter.

    Time: each write carries the monotonic time of its first sample (from the device's
    ADC clock). The newest write is the *anchor*; sample `i` was captured at
    `anchor_t + (i - anchor_idx) / rate`, which follows any drift between the audio
    clock and the monotonic clock. Count and anchor change together under a version
    word (odd while a write is in progress), so readers see them consistently.

    Consistency of samples: a reader copies only samples below the count, and checks
    after its copy that the writer cannot have reached them again (the oldest safe
    sample is `count + max_block - capacity`); otherwise `FrameLost`.
    """

    def __init__(self, shm: shared_memory.SharedMemory, *, owner: bool):
        super().__init__(shm, owner=owner)
        self._map_in(shm)
        header = np.ndarray((_HEADER_WORDS,), dtype=np.int64, buffer=shm.buf)
        if int(header[_A_MAGIC]) != _AUDIO_MAGIC:
            raise RingError(f"shared memory {shm.name!r} is not an audio ring of this version")
        self._header = header
        self.capacity = int(header[_A_CAPACITY])
        self.sample_rate = int(header[_A_RATE])
        self.max_block = int(header[_A_MAX_BLOCK])
        self._data = np.ndarray(
            (self.capacity,), dtype=np.float32, buffer=shm.buf, offset=_aligned(_HEADER_WORDS * 8)
        )

    @classmethod
    def create(
        cls, capacity: int, sample_rate: int, *, max_block: int = 4096, name: str | None = None
    ) -> AudioRing:
        if capacity < 4 * max_block or sample_rate <= 0 or max_block <= 0:
            raise ValueError(
                f"bad audio ring: capacity={capacity} rate={sample_rate} max_block={max_block}"
            )
        size = _aligned(_HEADER_WORDS * 8) + capacity * 4
        shm = shared_memory.SharedMemory(
            name=name or new_segment_name("audio"), create=True, size=size
        )
        cls._allocate(shm)
        header = np.ndarray((_HEADER_WORDS,), dtype=np.int64, buffer=shm.buf)
        header[:] = 0
        header[_A_CAPACITY], header[_A_RATE], header[_A_MAX_BLOCK] = (
            capacity,
            sample_rate,
            max_block,
        )
        header[_A_MAGIC] = _AUDIO_MAGIC
        del header
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> AudioRing:
        try:
            shm = shared_memory.SharedMemory(name=name, create=False)
        except FileNotFoundError:
            raise RingError(f"audio ring {name!r} does not exist (its owner has exited)") from None
        return cls(shm, owner=False)

    def _release_views(self) -> None:
        self._header = self._data = None

    # -- writer ----------------------------------------------------------------------

    def write(self, samples: np.ndarray, t_first_ns: int) -> int:
        """Append a block of mono samples whose first was captured at `t_first_ns`.

        Returns the running count after the write. Never waits.
        """
        n = len(samples)
        if n > self.max_block:
            raise ValueError(f"block of {n} samples exceeds the ring's max_block {self.max_block}")
        h = self._header
        count = int(h[_A_COUNT])
        pos = count % self.capacity
        first = min(n, self.capacity - pos)
        self._data[pos : pos + first] = samples[:first]
        if first < n:
            self._data[: n - first] = samples[first:]
        h[_A_VERSION] += 1  # odd: count and anchor are changing
        h[_A_ANCHOR_IDX] = count
        h[_A_ANCHOR_T] = t_first_ns
        h[_A_COUNT] = count + n
        h[_A_VERSION] += 1
        return count + n

    def add_overflow(self, n: int = 1) -> None:
        self._header[_A_OVERFLOWS] += n

    def close_writer(self) -> None:
        self._header[_A_CLOSED] = 1

    # -- readers ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return bool(self._header[_A_CLOSED])

    @property
    def overflows(self) -> int:
        return int(self._header[_A_OVERFLOWS])

    def clock(self) -> tuple[int, int, int]:
        """(count, anchor_idx, anchor_t_ns), consistent with each other."""
        h = self._header
        while True:
            v1 = int(h[_A_VERSION])
            if v1 % 2 == 0:
                state = int(h[_A_COUNT]), int(h[_A_ANCHOR_IDX]), int(h[_A_ANCHOR_T])
                if int(h[_A_VERSION]) == v1:
                    return state
            time.sleep(0)

    def index_at(self, t_ns: int, clock: tuple[int, int, int] | None = None) -> int:
        """Index of the sample captured at `t_ns` (may be outside what the ring holds)."""
        _, a_idx, a_t = clock or self.clock()
        return a_idx + round((t_ns - a_t) * self.sample_rate / 1e9)

    def time_of(self, index: int, clock: tuple[int, int, int] | None = None) -> int:
        _, a_idx, a_t = clock or self.clock()
        return a_t + round((index - a_idx) * 1e9 / self.sample_rate)

    def oldest_safe(self, count: int) -> int:
        """The oldest index a reader may copy when the count is `count`."""
        return max(0, count + self.max_block - self.capacity)

    def read(self, start: int, out: np.ndarray) -> None:
        """Copy samples [start, start + len(out)); they must all be held (see `held`)."""
        n = len(out)
        count, _, _ = self.clock()
        if start < self.oldest_safe(count) or start + n > count:
            raise FrameLost(
                f"samples [{start}, {start + n}) are not in the ring (it holds up to {count})"
            )
        pos = start % self.capacity
        first = min(n, self.capacity - pos)
        out[:first] = self._data[pos : pos + first]
        if first < n:
            out[first:] = self._data[: n - first]
        count_after, _, _ = self.clock()
        if start < self.oldest_safe(count_after):
            raise FrameLost(f"samples from {start} were overwritten while being read")
