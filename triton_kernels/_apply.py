"""The multi-tensor apply of the Triton backend: (tensor, chunk) tables in device memory.

A list is split by dtype (the dtype is a constexpr of each kernel), and each dtype group gets one
int64 table holding, back to back (n tensors, c chunks):
    [0, n)            data pointers of the tensors (cast in the kernels with tl.pointer_type)
    [n, 2n)           element counts
    [2n, 3n)          each tensor's index in the caller's list
    [3n, 4n)          each tensor's first chunk
    [4n, 5n)          each tensor's end chunk (its chunks are [first, end))
    [5n, 5n + c)      for each chunk: its tensor's index in the group
    [5n + c, 5n + 2c) for each chunk: its first element
One program handles one chunk of CHUNK elements, BLOCK at a time. Sizes and offsets are int64.
The table reaches the device in one copy from pinned memory, asynchronous on the current stream:
no host sync. Tables are cached by stream and content: gradients keep their memory from step to
step, so after the first step nothing is copied. A table used while a CUDA graph is captured is
kept for the life of the process (the graph holds its address); a table missing during capture is
an error (warm up with one eager step first). Other tables are evicted least recently used.
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from mopt_fast import _validate
from mopt_fast._ops import CHUNK_ELEMS

# A quarter of the other backends' chunk (mopt_fast._ops.CHUNK_ELEMS): a program steps through
# its whole chunk BLOCK at a time, masked past the tensor's end (Triton's interpreter, which CI
# runs, cannot loop to a runtime bound), so a shorter chunk keeps those masked steps few on the
# small tensors of a many-tensor list.
CHUNK = CHUNK_ELEMS // 4
# The interpreter runs programs one after another with numpy: fewer, wider steps are faster there.
BLOCK = 4096 if os.environ.get("TRITON_INTERPRET") == "1" else 1024

TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}


@dataclass
class Group:
    dtype: torch.dtype
    table: torch.Tensor
    n_tensors: int
    n_chunks: int
    max_chunks: int  # the most chunks any one tensor has

    @property
    def tl_dtype(self):
        return TL_DTYPES[self.dtype]

    def _part(self, k: int) -> torch.Tensor:
        return self.table[k * self.n_tensors : (k + 1) * self.n_tensors]

    @property
    def index(self) -> torch.Tensor:
        """Positions of this group's tensors in the caller's list."""
        return self._part(2)

    @property
    def first_chunk(self) -> torch.Tensor:
        return self._part(3)

    @property
    def end_chunk(self) -> torch.Tensor:
        return self._part(4)


@dataclass
class Plan:
    groups: list[Group]
    # (caller's tensor, dense copy) for non-dense tensors: written back after in-place kernels.
    copies: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # Whether two of the caller's tensors share bytes (see write_plans).
    shares_memory: bool = False

    def write_back(self) -> None:
        for original, copy in self.copies:
            original.copy_(copy)


def is_dense(t: torch.Tensor) -> bool:
    """True when the elements fill one run of memory (contiguous, or a permutation of it)."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted((z for z in zip(t.shape, t.stride()) if z[0] != 1), key=lambda z: z[1]):
        if stride != expected:
            return False
        expected *= size
    return True


_TABLES: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # least recently used first
_PINNED: dict[tuple, torch.Tensor] = {}  # used under CUDA-graph capture: never freed
_MAX_TABLES = 64


def _to_device(values: list[int], device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return torch.tensor(values, dtype=torch.int64)
    key = (device, torch.cuda.current_stream(device).cuda_stream, tuple(values))
    capturing = torch.cuda.is_current_stream_capturing()
    table = _PINNED.get(key)
    if table is not None:
        return table
    table = _TABLES.get(key)
    if table is not None:
        _TABLES.move_to_end(key)
        if capturing:
            _PINNED[key] = _TABLES.pop(key)
        return table
    if capturing:
        raise RuntimeError(
            "mopt_fast: a CUDA graph is being captured over a gradient list this stream has not "
            "seen before; run the same step once eagerly on the capture stream first"
        )
    table = torch.tensor(values, dtype=torch.int64).pin_memory().to(device, non_blocking=True)
    if len(_TABLES) >= _MAX_TABLES:
        _TABLES.popitem(last=False)
    _TABLES[key] = table
    return table


def on_device(device: torch.device):
    """Triton launches on the current CUDA device and stream: make them the tensors' own."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def make_plan(tensors: list[torch.Tensor]) -> Plan:
    device = tensors[0].device
    plan = Plan(groups=[])
    by_dtype: dict[torch.dtype, list[tuple[int, torch.Tensor]]] = {}
    spans: list[tuple[int, int]] = []  # the caller's bytes, for shares_memory
    for i, t in enumerate(tensors):
        dense = t
        if is_dense(t):
            start = t.data_ptr()
            spans.append((start, start + t.nbytes))
        else:  # read through a contiguous copy (written back after in-place kernels)
            spans.append(_validate.byte_range(t))
            dense = t.contiguous()
            plan.copies.append((t, dense))
        by_dtype.setdefault(t.dtype, []).append((i, dense))
    plan.shares_memory = _validate.spans_overlap(spans)
    for dtype, members in by_dtype.items():
        chunk_tensor: list[int] = []
        ptrs, numels, index, first, end, chunk_start = [], [], [], [], [], []
        for k, (i, t) in enumerate(members):
            ptrs.append(t.data_ptr())
            numels.append(t.numel())
            index.append(i)
            first.append(len(chunk_tensor))
            for start in range(0, t.numel(), CHUNK):
                chunk_tensor.append(k)
                chunk_start.append(start)
            end.append(len(chunk_tensor))
        table = _to_device(ptrs + numels + index + first + end + chunk_tensor + chunk_start, device)
        longest = max(e - f for f, e in zip(first, end))
        plan.groups.append(Group(dtype, table, len(members), len(chunk_tensor), longest))
    return plan


def write_plans(tensors: list[torch.Tensor]) -> Iterator[Plan]:
    """The plans an in-place kernel runs, in order. A list whose tensors share memory (a tensor
    listed twice) is written one round of disjoint tensors after another, as torch's foreach ops
    write it (see _validate.disjoint_rounds); each round's plan is made after the round before it
    was written, so its copies of non-dense tensors see those writes."""
    plan = make_plan(tensors)
    if not plan.shares_memory:
        yield plan
        return
    rounds = _validate.disjoint_rounds(tensors)
    assert rounds is not None  # the tensors share memory: there are rounds
    for members in rounds:
        yield make_plan([tensors[i] for i in members])


def acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def chunk_of(table, n_tensors, n_chunks, DTYPE: tl.constexpr, CHUNK: tl.constexpr):
    """(typed base pointer, first element, end element) of this program's chunk."""
    pid = tl.program_id(0)
    t = tl.load(table + 5 * n_tensors + pid)
    start = tl.load(table + 5 * n_tensors + n_chunks + pid)
    base = tl.load(table + t).to(tl.pointer_type(DTYPE))
    end = tl.minimum(start + CHUNK, tl.load(table + n_tensors + t))
    return base, start, end
