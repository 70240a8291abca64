"""The decoder: raw MLink JSON bodies of one message type -> one Arrow record batch.

The fast path joins the bodies with ``\\n`` and reads them with Arrow's JSON reader and the
type's wire schema (:mod:`capture.decode.shape`), then converts the wire table into the columns
(:mod:`capture.decode.leaves`) and renders what the dictionary does not know into ``_extra``
(:mod:`capture.decode.jsontext`). Bodies the reader rejects are isolated
(:mod:`capture.decode.bookkeeping`) and decoded by the slow path
(:mod:`capture.decode.slowpath`), which the decoder learns from.
"""

from __future__ import annotations

import io
import json
import re
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate, repeat
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from capture.decode.bookkeeping import (
    _MIN_BISECT_ROWS,
    _Chunk,
    _ChunkFailed,
    _Piece,
    _Run,
    _suspects,
)
from capture.decode.jsontext import (
    _NULL_STR,
    _Arr,
    _fragment,
    _join_fragments,
    _json_string_text,
    _json_value_text,
)
from capture.decode.leaves import _as_array, _flatten, _loose_leaf, _member, _strict_leaf
from capture.decode.results import DecodeResult, DriftReport
from capture.decode.shape import (
    _HEADER_LEAVES,
    _HEADER_WIRE,
    _HEADER_WIRE_NAMES,
    _TOP_NAMES,
    _ObjectSpec,
    _spec_names,
    _unknown_paths,
    _wire_struct,
)
from capture.decode.slowpath import _KIND_START, _Mistyped, _SlowPath, _SlowRow
from capture.schemas import MessageDef, arrow_schema, lookup
from capture.schemas.mapping import (
    CAPTURE_COLUMNS,
    ENUM_TYPES,
    TYPE_NUMBER_COLUMN,
    Column,
    Leaf,
    RepeaterColumn,
    layout,
    ns_to_timestamp_us,
)

_FAST_UNKNOWN_MAX: Final = 128
"""Distinct unknown members in one chunk above which it is decoded on the slow path."""
_FAILED_READ_BUDGET: Final = 6
"""Bytes of failed reads allowed per ``decode`` call, in multiples of the batch's size, before
failing pieces go to the slow path whole. A read costs about a tenth of decoding the same rows
slowly, so isolating bad bodies pays off until then; past it, most rows are bad anyway."""
_DIRECTED_TRIES: Final = 4
"""Rows pointed at by read errors that are removed from one piece before it is bisected."""
_READ_BLOCK_SIZE: Final = 1 << 20
_KEY_ENUM_PARTS: Final = frozenset({"at", "ts", "cp"})
_METADATA_NAMES: Final = frozenset([n for n, _ in CAPTURE_COLUMNS] + [TYPE_NUMBER_COLUMN[0]])
# Over text without escaped quotes and backslashes: linear (each try ends at the next quote).
_MEMBER_NAME: Final = re.compile(rb'"([^"]*)":')


class _TooWide(Exception):
    """The chunk holds more distinct unknown members than the fast path renders cheaply."""


class BatchDecoder:
    """Decodes batches of raw JSON bodies of one message type into ``self.schema`` batches.

    ``decode`` is synchronous and CPU-bound: call it from a worker thread. An instance is meant
    to be reused for every batch of its type (one per worker, not shared between threads): it
    learns from the rows that needed the slow path. A known field whose values turn out not to
    fit the wire type (an Int above 2**31, a Float sent as a string...) is from then on read by
    inference and sorted into column or ``_extra`` with Arrow compute ("loose" fields); a field
    that arrives with mixed JSON kinds (sometimes a number, sometimes a string), which the
    reader cannot hold in one column, gets a byte-pattern pre-screen that sends exactly those
    bodies to the slow path without a failed read first.
    """

    def __init__(self, msg_type: str) -> None:
        self.msg_type = msg_type
        self.schema: pa.Schema = arrow_schema(msg_type)
        self._msg: MessageDef | None = lookup(msg_type)
        self._core_schema = pa.schema([f for f in self.schema if f.name not in _METADATA_NAMES])
        self._columns: tuple[Column, ...] = ()
        self._spec = _ObjectSpec()
        self._items: dict[str, _ObjectSpec] = {}
        self._enum_sets: dict[str, pa.Array] = {}
        self._loose: set[str] = set()
        self._screen_patterns: set[bytes] = set()
        self._screen: re.Pattern[bytes] | None = None
        self._screen_version = 0
        # Member names this type can have (every level), and a generous colon budget per row
        # (DateTime values hold two colons each; Repeaters repeat their item's names).
        self._known_names: frozenset[bytes] = frozenset()
        self._colons_per_row = 0
        if self._msg is not None:
            self._columns = layout(self._msg).columns
            self._spec = _ObjectSpec.build(self._columns)
            self._items = {
                c.column: _ObjectSpec.build(c.members)
                for c in self._columns
                if isinstance(c, RepeaterColumn)
            }
        loose_capable = frozenset(c.column for c in self._columns if isinstance(c, Leaf))
        slow = _SlowPath(
            msg_type, self._msg, self._spec, self._items, loose_capable, self._core_schema
        )
        self._slow_row = slow.row
        self._slow_table = slow.table
        if self._msg is None:
            return  # generic schema: the slow path renders the message as JSON text
        self._known_names = frozenset(
            name.encode()
            for name in _spec_names(self._spec, self._items) | _HEADER_WIRE_NAMES | _TOP_NAMES
        )
        self._colons_per_row = 3 * len(self._known_names) + 64
        self._read_options = pj.ReadOptions(use_threads=True, block_size=_READ_BLOCK_SIZE)
        self._rebuild_parse_options()
        by_name = {f.name: f for f in self._msg.fields if f.repeater is None}
        for col in self._columns:
            if isinstance(col, Leaf) and col.ftype in ENUM_TYPES:
                fdef = by_name.get(col.path[-1])
                if col.path[-1] not in _KEY_ENUM_PARTS and fdef is not None:
                    self._enum_sets[col.column] = pa.array(fdef.enum_values, pa.utf8())

    @property
    def loose_fields(self) -> frozenset[str]:
        """Columns read by inference because their values did not fit the wire type."""
        return frozenset(self._loose)

    def _rebuild_parse_options(self) -> None:
        wire = pa.schema(
            [
                pa.field("header", _HEADER_WIRE),
                pa.field("message", _wire_struct(self._spec, self._items, self._loose)),
            ]
        )
        self._parse_options = pj.ParseOptions(
            explicit_schema=wire, unexpected_field_behavior="infer"
        )

    def decode(
        self,
        bodies: Sequence[bytes],
        *,
        type_numbers: Sequence[int],
        recv_ns: Sequence[int],
        snapshot: Sequence[bool],
        seq: Sequence[int],
        stripe: str,
        session: str,
    ) -> DecodeResult:
        n = len(bodies)
        for name, values in (
            ("type_numbers", type_numbers),
            ("recv_ns", recv_ns),
            ("snapshot", snapshot),
            ("seq", seq),
        ):
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} bodies")

        run = _Run(bodies, read_budget=_FAILED_READ_BUDGET * sum(map(len, bodies)))
        if self._msg is not None and n:
            self._fast_path(bodies, run)
        else:
            run.slow = list(range(n))

        rejected: list[tuple[int, bytes, str]] = []
        slow_rows: list[_SlowRow] = []
        slow_index: list[int] = []
        learned: list[_Mistyped] = []
        for i in sorted(run.slow):
            row = run.decoded[i] if i in run.decoded else self._slow_row(bodies[i])
            if isinstance(row, str):
                rejected.append((i, bodies[i], row))
                continue
            run.unknown |= row.unknown
            run.mistyped += len(row.mistyped)
            learned += row.mistyped
            slow_rows.append(row)
            slow_index.append(i)
        if learned and self._msg is not None:
            self._learn(learned)

        parts = [table for _, table in run.fast]
        order = [i for idx, _ in run.fast for i in idx]
        if slow_rows:
            parts.append(self._slow_table(slow_rows))
            order += slow_index
        core = pa.concat_tables(parts) if parts else self._core_schema.empty_table()
        if len(parts) > 1:
            core = core.take(pc.sort_indices(pa.array(order, pa.int64())))
            order.sort()
        core = core.combine_chunks()

        if len(order) != n:  # rejected bodies have no row
            type_numbers = [type_numbers[i] for i in order]
            recv_ns = [recv_ns[i] for i in order]
            snapshot = [snapshot[i] for i in order]
            seq = [seq[i] for i in order]
        arrays = _metadata_arrays(type_numbers, recv_ns, snapshot, seq, stripe, session)
        arrays += [_single_chunk(core.column(i), f.type) for i, f in enumerate(self._core_schema)]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        drift = DriftReport(
            unknown_fields=frozenset(run.unknown),
            mistyped_values=run.mistyped,
            slow_path_rows=len(run.slow),
            unknown_enum_values=self._unknown_enum_values(batch),
        )
        return DecodeResult(batch=batch, drift=drift, rejected=rejected)

    def _learn(self, mistyped: list[_Mistyped]) -> bool:
        """Update loose fields and pre-screen patterns; True if the pre-screen changed."""
        loose_before = len(self._loose)
        patterns_before = len(self._screen_patterns)
        for m in mistyped:
            if m.expected == m.kind:
                # Right JSON kind, value out of reach of the wire type (range, fraction, an
                # unparsable date): read the column by inference and sort values vectorised.
                # Header and Repeater-item values cannot be read loosely: isolated per batch.
                if m.loose_column is not None:
                    self._loose.add(m.loose_column)
            elif m.expected is not None:
                # A JSON kind the reader cannot mix with the expected one in a column: send
                # bodies with exactly this member/kind pairing to the slow path up front. The
                # pattern cannot match a body holding the expected kind there.
                name = re.escape(json.dumps(m.name, ensure_ascii=False).encode())
                self._screen_patterns.add(name + b":" + _KIND_START[m.kind])
        if len(self._loose) != loose_before:
            self._rebuild_parse_options()
        if len(self._screen_patterns) == patterns_before:
            return False
        self._screen = re.compile(b"|".join(sorted(self._screen_patterns)))
        self._screen_version += 1
        return True

    def _fast_path(self, bodies: Sequence[bytes], run: _Run) -> None:
        n = len(bodies)
        joined = b"\n".join(bodies)
        if self._too_many_names(joined, n):
            run.slow = list(range(n))
            return
        # Every body starts a line with "{", so each yields at least one row or a read error;
        # with exactly n rows read, row i is body i. (A raw LF inside a body can only split it
        # into unbalanced lines, which fail to parse, or add rows.)
        if all(map(bytes.startswith, bodies, repeat(b"{"))) and _is_utf8(joined):
            hits = self._screened(bodies, joined)
            if not hits:
                self._fast_lines(list(range(n)), list(bodies), joined, run)
                return
            run.slow += sorted(hits)
            idx = [i for i in range(n) if i not in hits]
            self._fast_lines(idx, [bodies[i] for i in idx], None, run)
            return
        idx = []
        lines = []
        for i, body in enumerate(bodies):
            line = body.strip(b" \t\r\n")
            if line[:1] != b"{" or line[-1:] != b"}" or not _is_utf8(line):
                run.slow.append(i)
                continue
            if b"\n" in line or b"\r" in line:
                # A raw CR/LF can only be whitespace between JSON tokens: blank it.
                line = line.replace(b"\r", b" ").replace(b"\n", b" ")
            idx.append(i)
            lines.append(line)
        hits = self._screened(lines, None)
        if hits:
            run.slow += [idx[p] for p in sorted(hits)]
            idx = [i for p, i in enumerate(idx) if p not in hits]
            lines = [line for p, line in enumerate(lines) if p not in hits]
        if idx:
            self._fast_lines(idx, lines, None, run)

    def _screened(self, lines: Sequence[bytes], joined: bytes | None) -> set[int]:
        """Positions of the lines that match a learned pre-screen pattern."""
        if self._screen is None:
            return set()
        if joined is None:
            return {p for p, line in enumerate(lines) if self._screen.search(line) is not None}
        ends = list(accumulate(len(line) + 1 for line in lines))  # offset after each "\n"
        return {bisect_right(ends, m.start()) for m in self._screen.finditer(joined)}

    def _fast_lines(
        self, idx: list[int], lines: list[bytes], joined: bytes | None, run: _Run
    ) -> None:
        """Decode ``lines`` (the bodies ``idx``) fast; isolate the bodies the reader rejects.

        A failed read is retried as a single block, which makes Arrow's "in row N" absolute;
        such a row, or the rows holding the value a conversion error quotes, go to the slow
        path and the rest is read again. Without a usable hint the piece is bisected.
        """
        version = self._screen_version
        pending: list[_Piece] = [(idx, lines, joined, 0, version)]
        while pending:
            idx, lines, joined, tries, version = pending.pop()
            if version != self._screen_version:  # learned something since it was queued
                if hits := self._screened(lines, None):
                    run.slow += [idx[p] for p in sorted(hits)]
                    idx = [i for p, i in enumerate(idx) if p not in hits]
                    lines = [line for p, line in enumerate(lines) if p not in hits]
                    joined = None
                if not idx:
                    continue
            version = self._screen_version
            data = joined if joined is not None else b"\n".join(lines)
            single_block = tries > 0
            try:
                table = self._read(data, len(lines), single_block)
                if self._unknown_count(table) > _FAST_UNKNOWN_MAX:
                    raise _TooWide
                core, chunk = self._convert(table)
            except _TooWide:
                # Rendering _extra costs Arrow calls per distinct unknown member (superlinear:
                # 10,000 distinct names in 50 rows took 32 s); the slow path is linear in the
                # bytes.  A server inventing names in every message goes there.
                run.slow += idx
                continue
            except (pa.ArrowException, _ChunkFailed) as exc:
                run.read_budget -= len(data)
                if len(idx) <= _MIN_BISECT_ROWS or run.read_budget < 0:
                    run.slow += idx
                    continue
                if tries == 0:
                    # Row hints count lines: make sure a body is exactly one line from here on.
                    lines = [line.replace(b"\n", b" ") if b"\n" in line else line for line in lines]
                    if not single_block and len(data) >= _READ_BLOCK_SIZE:
                        pending.append((idx, lines, None, 1, version))  # for an absolute row hint
                        continue
                suspects = _suspects(exc, lines) if tries <= _DIRECTED_TRIES else set()
                if suspects:
                    self._isolate([idx[p] for p in sorted(suspects)], run)
                    keep = [p for p in range(len(idx)) if p not in suspects]
                    rest = ([idx[p] for p in keep], [lines[p] for p in keep])
                    pending.append((*rest, None, tries + 1, version))
                else:
                    mid = len(idx) // 2
                    pending.append((idx[mid:], lines[mid:], None, 1, version))
                    pending.append((idx[:mid], lines[:mid], None, 1, version))
                continue
            run.unknown |= chunk.unknown
            run.mistyped += chunk.mistyped
            slow = chunk.slow_rows()
            if slow:
                keep_mask = [p not in slow for p in range(len(idx))]
                run.slow += [i for p, i in enumerate(idx) if p in slow]
                idx = [i for p, i in enumerate(idx) if keep_mask[p]]
                core = core.filter(pa.array(keep_mask, pa.bool_()))
            if idx:
                run.fast.append((idx, core))

    def _isolate(self, indices: list[int], run: _Run) -> None:
        """Send bodies a read error pointed at to the slow path now, and learn from them at
        once: the rest of the batch is then pre-screened instead of failing read after read."""
        run.slow += indices
        learned: list[_Mistyped] = []
        for i in indices:
            row = run.decoded[i] = self._slow_row(run.bodies[i])
            if not isinstance(row, str):
                learned += row.mistyped
        if learned:
            self._learn(learned)

    def _read(self, data: bytes, rows: int, single_block: bool) -> pa.Table:
        options = self._read_options
        if single_block:
            options = pj.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 16))
        table = pj.read_json(
            io.BytesIO(data), read_options=options, parse_options=self._parse_options
        )
        if table.num_rows != rows:
            raise _ChunkFailed("row count mismatch")  # some line held no object, or two
        return table

    def _too_many_names(self, joined: bytes, rows: int) -> bool:
        """True if the bodies hold more distinct member names the dictionary does not know
        than the fast path handles cheaply.  Arrow's reader infers one struct child per
        distinct name, superlinearly (400,000 names in 200 rows: 13 s), so this is decided
        before the read: first by a colon count (C speed; only a chunk averaging more colons
        per row than its type could have is looked at), then by the set of names.  A member
        takes at least 4 bytes (``"":0``), so a chunk too short to hold more members than that
        needs no count at all (the common case: counting costs 0.4 us per row, GIL held)."""
        limit = rows * self._colons_per_row
        if len(joined) <= 4 * limit or joined.count(b":") <= limit:
            return False
        plain = joined.replace(b"\\\\", b"").replace(b'\\"', b"")
        names = set(_MEMBER_NAME.findall(plain))
        return len(names - self._known_names) > _FAST_UNKNOWN_MAX

    def _unknown_count(self, table: pa.Table) -> int:
        """Distinct members the dictionary does not know, in the chunk's inferred schema."""
        count = 0
        for f in table.schema:
            if f.name == "header" and pa.types.is_struct(f.type):
                count += sum(1 for h in f.type if h.name not in _HEADER_WIRE_NAMES)
            elif f.name == "message" and pa.types.is_struct(f.type):
                count += len(_unknown_paths(f.type, self._spec))
            else:
                count += 1
        return count

    def _convert(self, table: pa.Table) -> tuple[pa.Table, _Chunk]:
        """Wire table -> core columns (header, data, _extra), plus rows to redo slowly."""
        n = table.num_rows
        chunk = _Chunk()
        flat = _flatten(table)  # "message.pkey.okey.xx" -> values (structs only, not lists)
        columns: list[_Arr] = []
        top: list[_Arr] = []

        header = table.column("header")
        header_known = {f.name for f in _HEADER_WIRE}
        header_extra = self._unknown_members(header, header_known, "header", chunk)
        mtyp = flat["header.mTyp"]
        other_type = pc.fill_null(pc.not_equal(mtyp, self.msg_type), False)
        if pc.any(other_type).as_py():
            mtyp_text = pc.if_else(other_type, _json_string_text(mtyp), _NULL_STR)
            header_extra.append(_fragment("mTyp", mtyp_text))
        for leaf in _HEADER_LEAVES:
            columns.append(_strict_leaf(leaf, flat.get("header." + leaf.path[0])))
        if (text := _join_fragments(header_extra)) is not None:
            top.append(_fragment("header", text))

        message = table.column("message")
        loose_extra: dict[tuple[str, ...], list[_Arr]] = {}
        for col in self._columns:
            if isinstance(col, RepeaterColumn):
                columns.append(self._repeater_array(col, flat["message." + col.name], chunk))
            elif col.ftype != "TimeSpan" and col.column not in self._loose:
                columns.append(_strict_leaf(col, flat.get(".".join(("message", *col.path)))))
            else:
                # Inferred: may be anything, an object included (which _flatten took apart).
                value, text, slow = _loose_leaf(col, _member(message, col.path), n)
                columns.append(value)
                if text is not None:
                    chunk.mistyped += pc.count(text).as_py()
                    fragment = _fragment(col.path[-1], text)
                    loose_extra.setdefault(col.path[:-1], []).append(fragment)
                if slow is not None:
                    chunk.redo_slowly(slow)
        if (text := self._object_extra(message, self._spec, (), loose_extra, chunk)) is not None:
            top.append(_fragment("message", text))

        for name in table.column_names:
            if name not in ("header", "message"):
                self._unknown_value(name, table.column(name), name, top, chunk)

        extra = _join_fragments(top)
        columns.append(extra if extra is not None else pa.nulls(n, pa.utf8()))
        return pa.Table.from_arrays(columns, schema=self._core_schema), chunk

    def _object_extra(
        self,
        obj: _Arr,
        spec: _ObjectSpec,
        path: tuple[str, ...],
        loose_extra: dict[tuple[str, ...], list[_Arr]],
        chunk: _Chunk,
    ) -> _Arr | None:
        """``_extra`` text for what ``obj`` holds beyond its columns (recursively), or None."""
        dotted = ".".join(("message", *path))
        fragments = self._unknown_members(obj, set(spec.members), dotted, chunk)
        fragments += loose_extra.get(path, [])
        for name, member in spec.members.items():
            if isinstance(member, _ObjectSpec):
                child = pc.struct_field(obj, name)
                text = self._object_extra(child, member, (*path, name), loose_extra, chunk)
                if text is not None:
                    fragments.append(_fragment(name, text))
        return _join_fragments(fragments)

    def _unknown_members(self, obj: _Arr, known: set[str], path: str, chunk: _Chunk) -> list[_Arr]:
        fragments: list[_Arr] = []
        for f in obj.type:
            if f.name not in known:
                member = pc.struct_field(obj, f.name)
                self._unknown_value(f.name, member, f"{path}.{f.name}", fragments, chunk)
        return fragments

    @staticmethod
    def _unknown_value(
        name: str, arr: _Arr, path: str, fragments: list[_Arr], chunk: _Chunk
    ) -> None:
        if pa.types.is_null(arr.type):
            return  # only JSON nulls: nothing to keep (null means absent)
        chunk.unknown.add(path)
        text, inexact = _json_value_text(arr)
        if inexact is not None:
            chunk.redo_slowly(inexact)
        if text is not None:
            fragments.append(_fragment(name, text))

    def _repeater_array(self, col: RepeaterColumn, arr: _Arr, chunk: _Chunk) -> _Arr:
        spec = self._items[col.column]
        item_fields = list(col.type.value_type)
        out = []
        row_offset = 0
        for lists in arr.chunks:
            items = lists.flatten()  # the items of the non-null lists, in order
            parents = pc.list_parent_indices(lists)
            bad_items = []
            for path in _unknown_paths(items.type, spec):
                chunk.unknown.add(f"message.{col.name}[].{path}")
                bad_items.append(pc.is_valid(_member(items, tuple(path.split(".")))))
            members = []
            for leaf in col.members:
                arr_leaf = _member(items, leaf.path)
                if leaf.ftype == "TimeSpan":
                    value, text, slow = _loose_leaf(leaf, arr_leaf, len(items))
                    if text is not None:  # values the item cannot hold: redo the row slowly
                        bad_items.append(pc.is_valid(text))
                    if slow is not None:
                        bad_items.append(slow)
                else:
                    value = _strict_leaf(leaf, arr_leaf)
                members.append(_as_array(value))
            for bad in bad_items:
                rows = pc.unique(pc.filter(parents, bad)).to_pylist()
                chunk.redo_rows_slowly(r + row_offset for r in rows)
            lengths = pc.fill_null(pc.list_value_length(lists), 0)
            offsets = pa.concat_arrays(
                [pa.array([0], pa.int32()), pc.cast(pc.cumulative_sum(lengths), pa.int32())]
            )
            rebuilt = pa.StructArray.from_arrays(members, fields=item_fields, mask=items.is_null())
            out.append(
                pa.ListArray.from_arrays(offsets, rebuilt, type=col.type, mask=lists.is_null())
            )
            row_offset += len(lists)
        return pa.chunked_array(out, col.type)

    def _unknown_enum_values(self, batch: pa.RecordBatch) -> frozenset[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for column, allowed in self._enum_sets.items():
            arr = batch.column(column)
            used = arr.dictionary.take(pc.unique(arr.indices.drop_null()))
            for value in pc.filter(used, pc.invert(pc.is_in(used, value_set=allowed))).to_pylist():
                found.add((column, value))
        return frozenset(found)


def _single_chunk(col: pa.ChunkedArray, dtype: pa.DataType) -> pa.Array:
    if col.num_chunks == 1:
        return col.chunk(0)
    return pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], dtype)


def _metadata_arrays(
    type_numbers: Sequence[int],
    recv_ns: Sequence[int],
    snapshot: Sequence[bool],
    seq: Sequence[int],
    stripe: str,
    session: str,
) -> list[pa.Array]:
    zeros = pa.repeat(pa.scalar(0, pa.int32()), len(recv_ns))
    exact = pa.array(recv_ns, pa.int64())
    return [
        ns_to_timestamp_us(exact),
        exact,
        pa.DictionaryArray.from_arrays(zeros, pa.array([stripe], pa.utf8())),
        pa.DictionaryArray.from_arrays(zeros, pa.array([session], pa.utf8())),
        pa.array(snapshot, pa.bool_()),
        pa.array(seq, pa.int64()),
        pa.array(type_numbers, TYPE_NUMBER_COLUMN[1]),
    ]


def _is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
