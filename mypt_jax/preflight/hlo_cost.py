"""HBM traffic of a compiled program, read from its optimized HLO text, per kind of work.

XLA's `cost_analysis()` gives one "bytes accessed" total that (a) counts a while loop's body
once, so a scanned 32-layer step looks like a 1-layer one, and (b) counts operands that the
TPU compiler placed in on-chip memory (VMEM, layout memory space `S(1)`) as if they came
from HBM. This module walks the compiled module instead:

- every instruction outside fusions costs its output plus its operands, like XLA's count,
  except that buffers in a memory space other than 0 (on-chip) cost nothing;
- a fusion operand that the fused computation only reads through `dynamic-slice` costs the
  slices (a scan body reading one layer of the stacked weights), and a fusion whose root
  updates a buffer in place through `dynamic-update-slice` costs the update, not the buffer;
  so do a `slice`, `dynamic-slice` or `dynamic-update-slice` outside fusions; an async
  `copy-start`/`slice-start` (HBM to on-chip memory and back) costs its HBM side once;
- a while loop costs its body times its trip count (XLA's `known_trip_count`, else the loop
  condition's `counter < N` with a literal N); a loop whose count cannot be read counts once
  and is reported in `unknown_loops`; a conditional costs the mean of its branches;
- instructions are split into `matmul` (a dot or convolution, alone or inside the fusion,
  or a matmul kernel: splash attention, cuBLAS, cuDNN), `async_copy` (the prefetches and
  evictions between HBM and on-chip memory that run beside other instructions),
  `collective` (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute,
  as synchronous instructions) and `other` (elementwise, normalisation, softmax, the
  optimizer update, copies). The roofline in `chips.py` overlaps the matmuls' and async
  copies' traffic with the compute and adds the rest;
- a collective inside a fusion (TPU's reduce-scatter is an `all-reduce-scatter` custom
  fusion around an all-reduce) is a collective too: its bytes cross the links, and the
  fusion's own HBM bytes stay the fusion's;
- `link_sync` and `link_async` count, apart from the HBM bytes, what the collectives send
  over the interconnect per device, as ring algorithms do over a group of n devices
  (`link_bytes`): an all-gather (n-1)/n of its output, a reduce-scatter (TPU's is an
  all-reduce inside an `all-reduce-scatter` fusion) and an all-to-all (n-1)/n of their
  input, an all-reduce twice that, a collective-permute its output. Asynchronous are those
  XLA started asynchronously, counted once, where they start: a `*-start` op, an `async-start`
  wrapping one, or TPU's async collective fusions (`async-collective-start` and the
  `async_collective_fusion` computations that carry the transfer beside a matmul; the
  `async-collective-done` adds nothing). The roofline hides their link time under the
  compute; the synchronous ones add theirs.
"""

from __future__ import annotations

import dataclasses
import math
import re

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# dtype[dims] and an optional layout {...}; the layout may hold a memory space S(n).
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\](\{[^}]*\})?")
_INSTR = re.compile(r"^(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+)")
_FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "opt-barrier",
         "partition-id", "replica-id", "after-all", "add-dependency"}
_DONE = re.compile(r"-done$")  # the matching -start carries the bytes
_COLLECTIVE = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# Custom calls that run kernels with matmuls in them (Pallas/Mosaic such as splash attention,
# cuBLAS, cuDNN, Triton), and ones that only reserve memory.
_KERNEL_TARGET = re.compile(r'custom_call_target="(tpu_custom_call|__cublas|__cudnn|__triton)')
_FREE_TARGET = re.compile(r'custom_call_target="AllocateBuffer"')


@dataclasses.dataclass
class HloBytes:
    matmul: float = 0.0  # HBM bytes of dot/convolution instructions and custom kernels
    async_copy: float = 0.0  # copy-start / slice-start between HBM and on-chip memory
    collective: float = 0.0  # collective instructions outside fusions
    other: float = 0.0
    # Bytes over the interconnect (not HBM, not in `total`): the collectives the instructions
    # after them wait for, wherever they sit; and those XLA started asynchronously.
    link_sync: float = 0.0
    link_async: float = 0.0
    unknown_loops: int = 0  # while loops counted once because their trip count was not read

    @property
    def total(self) -> float:
        return self.matmul + self.async_copy + self.collective + self.other

    @property
    def overlapped(self) -> float:
        """Bytes that move while the compute units work: the roofline's overlapped term."""
        return self.matmul + self.async_copy

    def to_dict(self) -> dict[str, float]:
        return {"matmul": self.matmul, "async_copy": self.async_copy,
                "collective": self.collective, "other": self.other, "total": self.total,
                "link_sync": self.link_sync, "link_async": self.link_async,
                "overlapped": self.overlapped, "unknown_loops": self.unknown_loops}


@dataclasses.dataclass(frozen=True)
class _Instr:
    name: str
    shape: str  # the output type text, layouts included
    op: str
    operands: tuple[str, ...]
    args: str  # the operand list as written (a parameter's index, a constant's value)
    attrs: str  # everything after the operand list


def array_bytes(type_text: str, hbm_only: bool = True) -> float:
    """Bytes of every array in a type (a tuple sums its elements); on-chip ones are free."""
    total = 0.0
    for dtype, dims, layout in _ARRAY.findall(type_text):
        if hbm_only and re.search(r"S\([1-9]", layout or ""):
            continue
        total += math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES[dtype]
    return total


def _top_elements(type_text: str) -> list[str]:
    """The elements of a tuple type `(a, (b, c), d)`, or the type itself."""
    text = type_text.strip()
    if not text.startswith("("):
        return [text]
    out, depth, start = [], 0, 1
    for k, ch in enumerate(text):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 1:
            out.append(text[start:k].strip())
            start = k + 1
    out.append(text[start:text.rindex(")")].strip())
    return out


def _split_operands(rest: str) -> tuple[str, str]:
    depth = 0
    for i, ch in enumerate(rest):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            if depth == 0:
                return rest[:i], rest[i + 1:]
            depth -= 1
    return rest, ""


def parse(text: str) -> tuple[dict[str, list[_Instr]], str]:
    """Computations of an HLO module text, by name, and the entry computation's name."""
    comps: dict[str, list[_Instr]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            m = _HEADER.match(line)
            if m and not line.startswith("HloModule"):
                current = m.group(1)
                comps[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        if current is None:
            continue
        m = _INSTR.match(line.strip())
        if m:
            name, shape, op, rest = m.groups()
            args, attrs = _split_operands(rest)
            comps[current].append(_Instr(name, shape, op, tuple(re.findall(r"%([\w.\-]+)", args)),
                                         args.strip(), attrs))
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry


def _called(attrs: str, key: str) -> list[str]:
    m = re.search(key + r"=\{?([^}]*?)\}?(?:,\s*[a-z_]+=|$)", attrs)
    if not m:
        return []
    return re.findall(r"%?([\w.\-]+)", m.group(1))


def _group_size(attrs: str) -> int:
    """Devices in each replica group: `{{0,1,2,3},...}`, `mesh['axis_0'=4,'axis_1'=2]
    {'axis_0'}` (the named axes' sizes multiplied), or an iota `[groups,size]<=[...]`;
    1 when not given."""
    m = re.search(r"replica_groups=\{\{([^}]*)\}", attrs)
    if m:
        return len(m.group(1).split(","))
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if m:
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
        return math.prod(int(sizes.get(a, 1)) for a in re.findall(r"'(\w+)'", m.group(2)))
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    return int(m.group(2)) if m else 1


def _is_collective(i: _Instr) -> bool:
    """An all-reduce, all-gather, reduce-scatter, all-to-all or collective-permute (or the
    -start of one)."""
    return i.op.startswith(_COLLECTIVE)


def _is_matmul(i: _Instr) -> bool:
    return i.op in ("dot", "convolution") or _KERNEL_TARGET.search(i.attrs) is not None


def _users(instrs) -> dict[str, list[_Instr]]:
    """Value name -> the instructions that read it."""
    users: dict[str, list[_Instr]] = {}
    for i in instrs:
        for o in i.operands:
            users.setdefault(o, []).append(i)
    return users


def _source(body: dict[str, _Instr], name: str) -> str:
    """The value a chain of bitcasts starts from."""
    while name in body and body[name].op == "bitcast":
        name = body[name].operands[0]
    return name


class _Module:
    def __init__(self, text: str):
        self.comps, self.entry = parse(text)
        self.shapes = {i.name: i.shape for instrs in self.comps.values() for i in instrs}
        self._matmul: dict[str, bool] = {}

    def is_async_collective(self, i: _Instr) -> bool:
        """A collective's `*-start`, or an `async-start` of a computation running one."""
        if i.op.endswith("-start") and _is_collective(i):
            return True
        return i.op == "async-start" and any(
            _is_collective(j)
            for comp in _called(i.attrs, "calls") for j in self.comps.get(comp, []))

    def collective_bytes(self, comp: str) -> float:
        """Link bytes of the collectives in a fused computation (and in those it calls)."""
        total = 0.0
        for i in self.comps.get(comp, []):
            if _is_collective(i):
                total += self.link_bytes(i, scatter=comp.startswith("all-reduce-scatter"))
            elif i.op == "fusion":
                total += sum(self.collective_bytes(c) for c in _called(i.attrs, "calls"))
        return total

    def link_bytes(self, i: _Instr, scatter: bool = False) -> float:
        """Bytes one device sends for collective `i` over its group of n (ring algorithms);
        `scatter`: an all-reduce whose fusion keeps one shard of the result."""
        n = _group_size(i.attrs)
        share = (n - 1) / n if n > 1 else 1.0
        elements = _top_elements(i.shape)
        # A -start's output sits second in its tuple (operands, output, context...).
        started = i.op.endswith("-start") and len(elements) > 1
        out = array_bytes(elements[1] if started else i.shape, hbm_only=False)
        into = sum(array_bytes(self.shapes.get(o, ""), hbm_only=False) for o in i.operands)
        if i.op.startswith("all-gather"):
            return share * out
        if i.op.startswith("all-reduce"):
            return share * into * (1 if scatter else 2)
        if i.op.startswith(("reduce-scatter", "all-to-all")):
            return share * into
        return out  # collective-permute: its output, from one neighbour

    def has_matmul(self, comp: str) -> bool:
        """Whether a (fused) computation runs a dot, a convolution or a matmul kernel."""
        if comp not in self._matmul:
            self._matmul[comp] = False  # guards recursion
            self._matmul[comp] = any(
                _is_matmul(i) or (i.op == "fusion" and any(self.has_matmul(c) for c in _called(i.attrs, "calls")))
                for i in self.comps.get(comp, []))
        return self._matmul[comp]

    def plain_bytes(self, i: _Instr) -> float:
        """Output plus every operand, whole (XLA's own count, HBM only)."""
        return array_bytes(i.shape) + sum(array_bytes(self.shapes.get(o, "")) for o in i.operands)

    def fusion_bytes(self, instr: _Instr) -> float:
        """Output plus operands of a fusion, counting dynamic slices and in-place updates."""
        fused = next(iter(_called(instr.attrs, "calls")), None)
        body = {i.name: i for i in self.comps.get(fused, [])}
        if not body:
            return self.plain_bytes(instr)
        params = {i.name: int(i.args) for i in body.values() if i.op == "parameter"}
        users = _users(body.values())
        root = list(body.values())[-1]
        outputs = list(root.operands) if root.op == "tuple" else [root.name]
        out_arrays = _ARRAY.findall(instr.shape)
        total, in_place = 0.0, set()
        for k, name in enumerate(outputs):
            element = body.get(name)
            if name in params and root.op == "tuple":
                continue  # a parameter passed through, aliased to its operand: nothing moves
            buffer = element and element.op == "dynamic-update-slice" and _source(body, element.operands[0])
            if buffer in params:
                in_place.add(buffer)  # updated where it lies: only the update moves
                total += array_bytes(body[element.operands[1]].shape, hbm_only=False)
            elif k < len(out_arrays):
                dtype, dims, layout = out_arrays[k]
                total += array_bytes(f"{dtype}[{dims}]{layout}")
        for pname, idx in params.items():
            if pname in in_place or idx >= len(instr.operands):
                continue
            full = array_bytes(self.shapes.get(instr.operands[idx], ""))
            total += min(full, self._read(pname, users, full))
        return total

    def _read(self, value: str, users: dict[str, list[_Instr]], full: float) -> float:
        """Bytes of `value` (a fused computation's parameter) that its `users` read:
        dynamic slices of it, through bitcasts and nested fusions; else all of it."""
        total = 0.0
        for u in users.get(value, []):
            if u.op == "dynamic-slice" and u.operands[0] == value:
                total += array_bytes(u.shape, hbm_only=False)
            elif u.op == "bitcast":
                total += self._read(u.name, users, full)
            elif u.op == "tuple" and not users.get(u.name):
                continue  # the root tuple passing it through: not read
            elif u.op == "tuple":
                return full
            elif u.op == "fusion":
                inner = next(iter(_called(u.attrs, "calls")), "")
                body = self.comps.get(inner, [])
                inner_users = _users(body)
                for k, operand in enumerate(u.operands):
                    if operand != value:
                        continue
                    param = next((i.name for i in body if i.op == "parameter" and int(i.args) == k),
                                 None)
                    total += full if param is None else self._read(param, inner_users, full)
            else:
                return full
        return total

    def trip_count(self, instr: _Instr) -> int | None:
        cond = next(iter(_called(instr.attrs, "condition")), None)
        m = re.search(r'"known_trip_count":\{"n":"(\d+)"', instr.attrs)
        if m:
            return int(m.group(1))
        body = self.comps.get(cond or "", [])
        literals = [int(i.args) for i in body
                    if i.op == "constant" and re.fullmatch(r"-?\d+", i.args)]
        compares = [i for i in body if i.op == "compare" and "direction=LT" in i.attrs]
        if len(compares) == 1 and len(set(literals)) == 1:
            return literals[0]
        return None

    def cost(self, comp: str, out: HloBytes, times: float = 1.0) -> None:
        for i in self.comps.get(comp, []):
            if i.op in _FREE or _DONE.search(i.op) or _FREE_TARGET.search(i.attrs):
                continue
            if i.op == "while":
                n = self.trip_count(i)
                if n is None:
                    out.unknown_loops += 1
                for body in _called(i.attrs, "body"):
                    self.cost(body, out, times * (n or 1))
                continue
            if i.op == "call":
                for c in _called(i.attrs, "to_apply"):
                    self.cost(c, out, times)
                continue
            if i.op == "conditional":  # which branch runs is not known: their mean
                branches = _called(i.attrs, "branch_computations")
                for c in branches:
                    self.cost(c, out, times / len(branches))
                continue
            matmul, overlapped = False, False
            if i.op == "fusion":
                nbytes = self.fusion_bytes(i)
                matmul = any(self.has_matmul(c) for c in _called(i.attrs, "calls"))
            elif i.op in ("copy-start", "slice-start"):
                # (source alias, destination, context): reads the (sliced) source where it
                # lies in HBM, writes the destination where it lies in HBM
                dest = _top_elements(i.shape)[1]
                src_in_hbm = array_bytes(self.shapes.get(i.operands[0], "")) > 0
                nbytes = array_bytes(dest, hbm_only=False) * src_in_hbm + array_bytes(dest)
                overlapped = True
            elif i.op in ("dynamic-slice", "slice"):  # reads only the slice it writes
                nbytes = 2 * array_bytes(i.shape)
            elif i.op == "dynamic-update-slice":  # in place: reads and writes the update
                nbytes = 2 * array_bytes(self.shapes.get(i.operands[1], ""))
            else:
                nbytes = self.plain_bytes(i)
                matmul = _is_matmul(i)
            if i.op == "fusion" and not i.name.startswith("async-collective-done"):
                comps = _called(i.attrs, "calls")
                nested = sum(self.collective_bytes(c) for c in comps)
                if i.name.startswith("async-collective-start") or any(
                        c.startswith("async_collective_fusion") for c in comps):
                    out.link_async += times * nested
                else:
                    out.link_sync += times * nested
            if self.is_async_collective(i):
                out.link_async += times * (
                    sum(self.collective_bytes(c) for c in _called(i.attrs, "calls"))
                    if i.op == "async-start" else self.link_bytes(i))
                out.async_copy += times * nbytes  # its HBM side moves beside the compute
            elif _is_collective(i):
                out.collective += times * nbytes
                out.link_sync += times * self.link_bytes(i)
            elif matmul:
                out.matmul += times * nbytes
            elif overlapped:
                out.async_copy += times * nbytes
            else:
                out.other += times * nbytes


def hbm_bytes(hlo_text: str) -> HloBytes:
    """Per-device HBM bytes one run of the module moves, split by kind of work."""
    module = _Module(hlo_text)
    out = HloBytes()
    module.cost(module.entry, out)
    return out
