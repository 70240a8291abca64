"""Raw MLink JSON bodies of one message type -> one Arrow record batch (the capture hot path).

Fast path: the bodies are joined with ``\\n`` and handed to Arrow's C++ JSON reader with an
explicit *wire* schema (``header`` struct, ``message`` struct with its ``pkey`` struct) derived
from the dictionary. The structs are then flattened into the table columns with Arrow compute
(dictionary-encoding for enums, ``date32`` casts for date keys, list rebuilding for Repeaters).
No Python object is created per message.

The reader runs with ``unexpected_field_behavior="infer"``: members the dictionary does not know
(schema drift) come back as extra, inferred struct children and are rendered into ``_extra`` with
Arrow compute as well, so a server that permanently sends a new field does not slow capture down.
TimeSpan fields (JSON form unknown) are left out of the wire schema on purpose and take the same
inferred route, so a string or an integer both stay on the fast path.

Anything the reader cannot hold (a mistyped value, a number out of range, a body that is not one
JSON object, a DateTime it cannot parse) makes the read fail for the whole chunk. The offending
bodies are then isolated: Arrow's error names the row (or quotes the value) and those bodies are
set aside, or, without a usable hint, the chunk is bisected. Only the isolated bodies go through
the Python slow path, which stores every value it can in its column and moves the rest, verbatim,
to ``_extra``. The decoder learns from them so that a lasting server-side change does not keep
costing failed reads (see ``BatchDecoder``).

The pieces, one module each:

* ``results``: what a ``decode`` call returns (``DecodeResult``, ``DriftReport``);
* ``shape``: the known members of the JSON objects of one message type, and the wire schema;
* ``jsontext``: the JSON text of ``_extra``, rendered with Arrow compute;
* ``leaves``: the reader's values of one leaf -> its column's values (fast path);
* ``slowpath``: exact JSON decoding of one body in Python;
* ``bookkeeping``: the state of one ``decode`` call, and what a failed read points at;
* ``decoder``: ``BatchDecoder``, which runs the fast path, isolates, and learns.

This package must stay free of trio: the capture worker calls it from a worker thread.
"""

from capture.decode.decoder import BatchDecoder
from capture.decode.results import DecodeResult, DriftReport

__all__ = ["BatchDecoder", "DecodeResult", "DriftReport"]
