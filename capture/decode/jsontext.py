"""JSON text for ``_extra``, rendered with Arrow compute (vectorised, no Python object per row):
the members the dictionary does not know, and the values their column cannot hold."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

# Arrow arrays and chunked arrays are used interchangeably; pyarrow has no type stubs.
_Arr = Any

_MAX_EXACT_DOUBLE: Final = float(2**53)
_NULL_STR: Final = pa.scalar(None, pa.utf8())


def _json_string_text(arr: _Arr) -> _Arr:
    """JSON string literals for a utf8 array (nulls stay null)."""
    if pc.any(pc.match_substring_regex(arr, r"[\x00-\x1f]")).as_py():
        # Rare: control characters need \uXXXX escapes; let Python render this column.
        values = [None if v is None else json.dumps(v, ensure_ascii=False) for v in arr.to_pylist()]
        return pa.array(values, pa.utf8())
    escaped = pc.replace_substring(arr, "\\", "\\\\")
    escaped = pc.replace_substring(escaped, '"', '\\"')
    return pc.binary_join_element_wise('"', escaped, '"', "")


def _json_value_text(arr: _Arr) -> tuple[_Arr | None, _Arr | None]:
    """(JSON text, rows that cannot be rendered exactly) for a column the reader inferred."""
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _json_string_text(arr), None
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.utf8()), None
    if pa.types.is_boolean(t):
        return pc.if_else(arr, "true", "false"), None
    if pa.types.is_floating(t):
        # Integers mixed with fractions are inferred as double: big integers lost digits there.
        inexact = pc.fill_null(pc.greater_equal(pc.abs(arr), _MAX_EXACT_DOUBLE), False)
        text = pc.cast(arr, pa.utf8())
        text = pc.replace_substring_regex(text, "^nan$", "NaN")
        text = pc.replace_substring_regex(text, "^(-?)inf$", "${1}Infinity")
        return text, inexact
    # Nested values, or strings the reader turned into timestamps: text not recoverable here.
    return None, pc.is_valid(arr)


def _fragment(name: str, text: _Arr) -> _Arr:
    """``,"name":text`` (null where text is null)."""
    prefix = "," + json.dumps(name, ensure_ascii=False) + ":"
    return pc.binary_join_element_wise(prefix, text, "", null_handling="emit_null")


def _join_fragments(fragments: Sequence[_Arr]) -> _Arr | None:
    """Fragments -> ``{"k":v,...}`` per row, null where every fragment is null."""
    if not fragments:
        return None
    # (binary_join_element_wise's null_handling="skip" is not used: it drops trailing rows
    # whose inputs are all null in pyarrow 26; "replace" with leading commas is equivalent.)
    joined = pc.binary_join_element_wise(
        *fragments, "", null_handling="replace", null_replacement=""
    )
    body = pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(joined, 1), "}", "")
    return pc.if_else(pc.equal(joined, ""), _NULL_STR, body)
