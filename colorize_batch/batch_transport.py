"""The batch transport: decoded files from the DataLoader's worker processes to the engine.

    DecodeDataset[i] (in a worker: decoding.decode, a timeout, C libraries' stderr) -> DecodedItem
        -> collate_items (one batch: two tensors) -> [process boundary] -> unpack_batch -> items

A file that fails becomes an item with ``error`` set, never an exception. Every tensor that
crosses the process boundary costs a file-descriptor handshake, so a batch travels as one byte
buffer of grey levels and one stacked tensor of network squares (:func:`collate_items`).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch.utils.data import Dataset

from . import decoding
from .decoding import Decoded, DecodeError


@dataclass
class GreyLayout:
    """Where one image's grey levels lie in its batch's byte buffer while packed."""

    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class DecodedItem:
    """One file as a decode worker hands it to the engine (:class:`DecodeDataset` item).

    Either ``error`` (the reason, the file failed) or the pixels: ``grey``, the full-resolution
    grey levels (``(H, W)`` uint8, int32 holding 16-bit levels when ``bits`` is 16) and
    ``net``, the ``(1, S, S)`` uint8 square the network sees. The rest is :class:`Decoded`'s.
    While packed for the trip (:func:`collate_items`) ``grey`` and ``net`` are ``None`` and
    ``layout`` / ``net_index`` say where they lie in the :class:`DecodedBatch`.
    """

    index: int  # into the dataset's paths (the plan's jobs)
    error: str | None = None
    grey: torch.Tensor | None = None
    net: torch.Tensor | None = None
    bits: int = 8
    chroma: float | None = None
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    decode_s: float = 0.0
    layout: GreyLayout | None = None
    net_index: int = -1

    @classmethod
    def from_decoded(cls, index: int, d: Decoded, notes: list[str] | None = None, decode_s: float = 0.0) -> DecodedItem:
        """The item of a decoded image (16-bit levels held as int32, the network square as ``(1, S, S)``)."""
        grey = torch.from_numpy(d.grey.astype(np.int32) if d.bits == 16 else d.grey)
        return cls(index, grey=grey, net=torch.from_numpy(d.net_input.copy()).unsqueeze(0), bits=d.bits,
                   chroma=d.chroma, meta=d.meta, notes=d.notes if notes is None else notes, decode_s=decode_s)


@dataclass
class DecodedBatch:
    """A batch packed for the trip to the main process: two tensors, however many images."""

    items: list[DecodedItem]
    pixels: torch.Tensor | None = None  # every image's grey levels, one flat byte buffer
    net: torch.Tensor | None = None  # (B_ok, 1, S, S) uint8: the network squares, stacked


class DecodeTimeout(Exception):
    pass


def _on_alarm(_signum, _frame) -> None:
    raise DecodeTimeout


class DecodeDataset(Dataset):
    """Decodes ``paths[i]`` in a DataLoader worker; returns a :class:`DecodedItem`, never raises.

    On failure the item carries ``error`` (the reason) instead of pixels, so one bad file
    costs one line in the report and nothing else. ``timeout`` (seconds) bounds one file's
    decode where Python code spins (an alarm signal); a decoder stuck inside C code is
    stopped by the engine, which kills the worker (see ``local_engine.decoded_batches``).
    Decoder warnings (Pillow's, and libtiff's messages on stderr in a worker: see
    :meth:`capture_stderr`) travel with the item as ``notes``.
    """

    def __init__(self, paths: list[Path], size: int, max_pixels: int | None = None, pages: list[int] | None = None,
                 timeout: float | None = None):
        self.paths = paths
        self.size = size
        self.max_pixels = max_pixels
        self.pages = pages
        self.timeout = timeout
        self._stderr: IO[bytes] | None = None  # a temporary file standing in for fd 2, in a worker

    def __len__(self) -> int:
        return len(self.paths)

    def capture_stderr(self) -> None:
        """In a worker process: send fd 2 (where C libraries print) to a file read after each decode."""
        import tempfile

        self._stderr = tempfile.TemporaryFile()
        os.dup2(self._stderr.fileno(), 2)

    def _stderr_lines(self) -> list[str]:
        if self._stderr is None:
            return []
        os.lseek(2, 0, os.SEEK_SET)
        text = self._stderr.read().decode("utf-8", "backslashreplace")
        os.ftruncate(2, 0)
        os.lseek(2, 0, os.SEEK_SET)
        self._stderr.seek(0)
        return [line.strip() for line in text.splitlines() if line.strip()][:20]

    def _decode(self, index: int) -> Decoded:
        page = self.pages[index] if self.pages else 0
        use_alarm = bool(self.timeout) and threading_is_main()
        if use_alarm:
            previous = signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, float(self.timeout or 0))
        try:
            return decoding.decode(self.paths[index], self.size, page, self.max_pixels)  # looked up per call: a hook may wrap it
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)

    def __getitem__(self, index: int) -> DecodedItem:
        start = time.perf_counter()
        try:
            d = self._decode(index)
        except DecodeError as exc:
            return DecodedItem(index, error=str(exc), notes=self._stderr_lines())
        except DecodeTimeout:
            return DecodedItem(index, error=f"decoding took longer than input.decode_timeout ({self.timeout:g} s)")
        except MemoryError:
            return DecodedItem(index, error="out of memory while decoding")
        except Exception as exc:  # noqa: BLE001 - whatever a decoder raises is this file's failure, never the run's
            return DecodedItem(index, error=f"cannot decode: {type(exc).__name__}: {exc}")
        return DecodedItem.from_decoded(index, d, d.notes + self._stderr_lines(), time.perf_counter() - start)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _batch_buffer(nbytes: int) -> torch.Tensor:
    """A byte tensor for a batch; inside a DataLoader worker it is allocated in shared memory
    straight away (as torch's own ``default_collate`` does), so the trip to the main process
    does not copy the batch's pixels once more."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(nbytes, dtype=torch.uint8)
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))


def collate_items(items: list[DecodedItem]) -> DecodedBatch:
    """Pack a batch for the trip from a DataLoader worker to the main process.

    Images differ in size, so they cannot be stacked; but every tensor crossing the process
    boundary costs a file-descriptor handshake (~1 ms). All grey levels of the batch go into
    one flat byte buffer and the network squares into one stacked tensor: two handshakes per
    batch instead of two per image. :func:`unpack_batch` makes the items whole again (as views).
    """
    ok = [it for it in items if not it.error]
    if not ok:
        return DecodedBatch(items)
    greys: list[torch.Tensor] = []
    for it in ok:
        assert it.grey is not None
        greys.append(it.grey)
        it.grey = None  # travels in the batch buffer
    offsets, end = [], 0
    for grey in greys:
        offsets.append(end)
        end += -(-grey.numel() * grey.element_size() // 8) * 8  # 8-byte aligned: int32 views need it
    pixels = _batch_buffer(end)
    for it, grey, offset in zip(ok, greys, offsets):
        raw = grey.reshape(-1).view(torch.uint8)
        pixels[offset:offset + raw.numel()] = raw
        it.layout = GreyLayout(offset, raw.numel(), tuple(grey.shape), grey.dtype)
    nets: list[torch.Tensor] = []
    for i, it in enumerate(ok):
        assert it.net is not None
        nets.append(it.net)
        it.net, it.net_index = None, i  # travels in the stacked tensor
    return DecodedBatch(items, pixels, torch.stack(nets))


def unpack_batch(batch: DecodedBatch) -> list[DecodedItem]:
    """The items of a :func:`collate_items` batch, with ``grey`` and ``net`` views restored."""
    for it in batch.items:
        if it.error or it.layout is None:
            continue
        assert batch.pixels is not None and batch.net is not None
        layout, it.layout = it.layout, None
        it.grey = batch.pixels[layout.offset:layout.offset + layout.nbytes].view(layout.dtype).view(layout.shape)
        it.net = batch.net[it.net_index]
    return batch.items
