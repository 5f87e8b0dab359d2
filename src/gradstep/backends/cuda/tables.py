"""Work lists of the multi-tensor kernels, built once and cached on the host and the device.

A launch's ``meta`` table (see codegen) holds the data pointers of every role, the numel of every
tensor and the ``(tensor, chunk)`` work pairs. It depends only on where the tensors live, so it is
cached under the tuple of data pointers and numels: a steady training loop builds it once and
copies it to the device from pinned memory, without a sync.

CUDA-graph capture forbids copies from pageable memory (seen with torch 2.11) and allocating
pinned memory, and the gradients of a captured step usually live at new addresses (the graph's
pool). So eager steps also set aside a pinned buffer of each table's size, filed under the
group's layout without the gradients' addresses (the warm-up steps torch.cuda.graphs asks for
provide them). A step being captured fills such a buffer on the host and records its copy into a
temporary device table; the copy is replayed with the graph, so the buffer is kept for the life
of the process.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class Launch:
    meta: torch.Tensor  # int64 table on the tensors' device
    n_tensors: int
    n_blocks: int  # programs to launch: work pairs
    aligned: bool  # every pointer 16-byte aligned: the kernel may use vector access
    rows: list[int]  # which of the caller's rows, in table order (for per-tensor scalars)


_CACHE: OrderedDict[tuple, list[Launch]] = OrderedDict()
_CACHE_SIZE = 16
_SPARES: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()  # layout -> pinned buffers
_CAPTURED: list[torch.Tensor] = []  # pinned sources of copies recorded in CUDA graphs


def _host_table(ptrs: list[list[int]], numels: list[int], chunk: int) -> torch.Tensor:
    n = len(numels)
    num = torch.tensor(numels, dtype=torch.int64)
    chunks = (num + chunk - 1) // chunk
    total = int(chunks.sum())
    tid = torch.repeat_interleave(torch.arange(n, dtype=torch.int64), chunks)
    first = torch.cumsum(chunks, 0) - chunks
    cidx = torch.arange(total, dtype=torch.int64) - torch.repeat_interleave(first, chunks)
    flat = torch.tensor([p for role in ptrs for p in role], dtype=torch.int64)
    return torch.cat([flat, num, torch.stack([tid, cidx], 1).reshape(-1)])


def _stream_id(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _hosts(n_roles, rows, ptrs, numels, chunk) -> list[tuple[torch.Tensor, int, bool, list[int]]]:
    """Host tables, split into 16-byte-aligned rows and the others."""
    aligned = [all(role[i] % 16 == 0 for role in ptrs) for i in range(len(rows))]
    out = []
    for want in (True, False):
        idx = [i for i, a in enumerate(aligned) if a == want]
        if not idx:
            continue
        host = _host_table([[role[i] for i in idx] for role in ptrs], [numels[i] for i in idx], chunk)
        n_work = (host.numel() - (n_roles + 1) * len(idx)) // 2
        if n_work:
            out.append((host, len(idx), want, [rows[i] for i in idx]))
    return out


class HashedKey:
    """A tuple used as a dict key, hashed once: a step's keys hold thousands of addresses, and
    Python re-hashes a plain tuple at every lookup."""

    __slots__ = ("items", "hash")

    def __init__(self, items: tuple):
        self.items = items
        self.hash = hash(items)

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other) -> bool:
        return isinstance(other, HashedKey) and self.hash == other.hash and self.items == other.items


def launches(device: torch.device, n_roles: int, rows: list[int], chunk: int,
             all_ptrs: list[list[int]], all_numels: list[int],
             placement: HashedKey | None = None) -> list[Launch]:
    """The launches covering ``rows`` of a group's ``n_roles`` tensor lists (``[p, g, *states]``
    on ``device``, validated by the caller: contiguous, one dtype per role, equal numels within
    a row), given every row's data pointers per role and numels; ``chunk`` elements per work
    item.

    ``placement``, if given, identifies the rows' parameters and states, their addresses and
    sizes (everything but the gradients); else it is made from the pointers and numels."""
    every_row = len(rows) == len(all_numels)
    if every_row:
        ptrs, numels = all_ptrs, all_numels
    else:
        ptrs = [[role[r] for r in rows] for role in all_ptrs]
        numels = [all_numels[r] for r in rows]
    if placement is None:
        placement = HashedKey((*map(tuple, all_ptrs[:1] + all_ptrs[2:]), tuple(all_numels)))
    layout = (device, chunk, placement, None if every_row else tuple(rows))
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return _captured(n_roles, rows, ptrs, numels, chunk, layout, device)
    key = (_stream_id(device), HashedKey(tuple(ptrs[1])), layout)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
    else:
        hit = []
        for host, n, aligned, sub_rows in _hosts(n_roles, rows, ptrs, numels, chunk):
            meta = host if device.type == "cpu" else host.pin_memory().to(device, non_blocking=True)
            hit.append(Launch(meta, n, (meta.numel() - (n_roles + 1) * n) // 2, aligned, sub_rows))
        _CACHE[key] = hit
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    if device.type == "cuda" and layout not in _SPARES:
        _SPARES[layout] = [torch.empty(launch.meta.numel(), dtype=torch.int64, pin_memory=True)
                           for launch in hit]
        if len(_SPARES) > _CACHE_SIZE:
            _SPARES.popitem(last=False)
    return hit


def _captured(n_roles, rows, ptrs, numels, chunk, layout, device) -> list[Launch]:
    hosts = _hosts(n_roles, rows, ptrs, numels, chunk)
    bufs = _SPARES.pop(layout, None)
    if bufs is None or [b.numel() for b in bufs] != [h.numel() for h, *_ in hosts]:
        raise RuntimeError(
            "gradstep: capturing optimizer.step() in a CUDA graph needs an eager step of the "
            "same optimizer and parameters first (the warm-up torch.cuda.graphs asks for)"
        )
    out = []
    for buf, (host, n, aligned, sub_rows) in zip(bufs, hosts):
        buf.copy_(host)
        _CAPTURED.append(buf)
        meta = buf.to(device, non_blocking=True)
        out.append(Launch(meta, n, (meta.numel() - (n_roles + 1) * n) // 2, aligned, sub_rows))
    return out


def clear() -> None:
    """Forget cached eager tables (tests; freeing memory)."""
    _CACHE.clear()
