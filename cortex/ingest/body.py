"""Reading request bodies: JSON whatever the Content-Type, chunked or not, compressed or not,
and bounded at every step.

The order matters, because each step bounds the next one's work:

1. :func:`read_body` refuses a body whose ``Content-Length`` is over the cap before reading
   a byte of it, and reads a chunked body (no length) only up to the cap plus one byte.
2. :func:`decode_body` undoes ``Content-Encoding: gzip`` or ``deflate`` as a stream, with a
   bound on the output, so a compression bomb stops at the bound (413) instead of filling
   memory.
3. :func:`parse_json` parses with orjson (strict UTF-8, no NaN or Infinity, nesting at most
   1024) and turns its errors into messages a client can act on.
4. :func:`check_shape` bounds what the parser allows but Cortex does not: nesting deeper
   than ``max_json_depth`` and strings (or keys) longer than ``max_string_chars``.

No message here contains the client's bytes: a message says where the problem is, never
what was there.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import orjson
from werkzeug.wsgi import get_content_length

UTF8_BOM = b"\xef\xbb\xbf"
#: a content coding's name as the HTTP grammar allows it (shown in messages; anything else is not)
_TOKEN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,32}")
#: deepest nesting orjson parses; deeper documents fail in the parser itself
ORJSON_MAX_DEPTH = 1024


class BodyError(Exception):
    """The body cannot be read or decoded; ``status`` is the HTTP answer to give."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class BodyLimits:
    """The bounds a request body must stay within (the ``[ingest]`` keys of the same names)."""

    #: bytes as sent (compressed or not); more is 413 before the body is read
    max_body_bytes: int = 1_048_576
    #: bytes after ``Content-Encoding`` is undone
    max_decoded_bytes: int = 8_388_608
    #: decoded size ÷ sent size allowed beyond ``max_body_bytes`` (a compression bomb's tell)
    max_compression_ratio: float = 100.0
    #: nesting of JSON arrays and objects (a bundle needs 4)
    max_json_depth: int = 32
    #: characters in any JSON string or object key
    max_string_chars: int = 262_144

    @classmethod
    def from_config(cls, ingest: Mapping[str, Any]) -> "BodyLimits":
        """The limits from the ``[ingest]`` configuration table (missing keys: defaults)."""
        names = cls.__dataclass_fields__
        return cls(**{name: ingest[name] for name in names if name in ingest})

    def decoded_limit(self, sent_bytes: int) -> int:
        """How many bytes a body of ``sent_bytes`` compressed bytes may decode to.

        Whatever its compression, a body may decode to ``max_body_bytes``, as much as an
        uncompressed body may be; beyond that, to ``max_compression_ratio`` times its sent
        size, and never beyond ``max_decoded_bytes``.
        """
        by_ratio = int(sent_bytes * self.max_compression_ratio)
        return min(self.max_decoded_bytes, max(self.max_body_bytes, by_ratio))


def read_body(environ: dict, max_bytes: int) -> bytes:
    """The raw body, at most ``max_bytes`` (413 beyond), with or without Content-Length.

    Browser SDKs send ``text/plain`` on purpose and some clients send
    ``Transfer-Encoding: chunked`` without a length, so neither header decides anything.
    A declared length over the cap is refused before the body is read; a chunked body is
    read to at most ``max_bytes + 1`` bytes, so memory stays bounded either way.
    """
    stream = environ["wsgi.input"]
    length = get_content_length(environ)
    if length is not None:
        if length > max_bytes:
            raise BodyError(413, f"the body is {length} bytes; the limit is {max_bytes} bytes. "
                                 "Send fewer events per request, or compress the body with gzip")
        return stream.read(length)
    if not environ.get("wsgi.input_terminated"):
        # no length, and a server that does not end the stream (gunicorn does): there is
        # no body that could be read safely
        return b""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BodyError(413, f"the body is larger than the limit of {max_bytes} bytes. "
                             "Send fewer events per request, or compress the body with gzip")
    return data


def content_codings(header: str | None) -> list[str]:
    """The content codings of a ``Content-Encoding`` header, lower case, ``identity`` left out."""
    if not header:
        return []
    return [part for part in (p.strip().lower() for p in header.split(",")) if part and part != "identity"]


def decode_body(data: bytes, content_encoding: str | None, limits: BodyLimits) -> bytes:
    """Undo ``Content-Encoding`` (``gzip``, ``x-gzip``, ``deflate``), bounded by ``limits``.

    Decompression is a stream with a cap on its output: it stops one byte past the allowed
    size, so a body that would decode to gigabytes costs no more than the cap.  ``deflate``
    is taken with or without its zlib wrapper, since clients send both.
    """
    codings = content_codings(content_encoding)
    if not codings:
        return data
    if len(codings) > 1:
        raise BodyError(415, "the body has more than one Content-Encoding; send it with gzip, deflate or none")
    coding = codings[0]
    if coding in ("gzip", "x-gzip"):
        wbits, name = 16 + zlib.MAX_WBITS, "gzip"
    elif coding == "deflate":
        wbits, name = (zlib.MAX_WBITS if _has_zlib_header(data) else -zlib.MAX_WBITS), "deflate"
    else:
        shown = coding if _TOKEN.fullmatch(coding) else "of this request"
        raise BodyError(415, f"the Content-Encoding {shown} is not supported; send gzip, deflate or none")
    limit = limits.decoded_limit(len(data))
    pieces: list[bytes] = []
    size = 0
    pending = data
    try:
        while pending:
            decompressor = zlib.decompressobj(wbits)
            piece = decompressor.decompress(pending, limit + 1 - size)
            size += len(piece)
            if size > limit:
                raise BodyError(413, _too_large_decoded(len(data), limit, limits))
            pieces.append(piece)
            if not decompressor.eof:
                raise BodyError(400, f"the {name} body is cut short; send the whole compressed body")
            # gzip allows several members one after the other; deflate has one stream
            pending = decompressor.unused_data if name == "gzip" else b""
            if name == "deflate" and decompressor.unused_data:
                raise BodyError(400, "the deflate body has data after its end; send one deflate stream")
    except zlib.error:
        raise BodyError(400, f"the body is not valid {name} data, although Content-Encoding says it is; "
                             "compress it with " + name + " or leave the header out") from None
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _has_zlib_header(data: bytes) -> bool:
    # RFC 1950: compression method 8, and the two header bytes are a multiple of 31
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def _too_large_decoded(sent: int, limit: int, limits: BodyLimits) -> str:
    if limit < limits.max_decoded_bytes:
        return (f"the {sent}-byte body decompresses to more than {limit} bytes, over "
                f"{limits.max_compression_ratio:g} times its size; send less data per request")
    return f"the body decompresses to more than {limit} bytes, the limit; send fewer events per request"


def parse_json(data: bytes) -> Any:
    """Decode a JSON body; a clear 400 when it is not JSON, not UTF-8, or not finite."""
    if data.startswith(UTF8_BOM):
        # some HTTP stacks write a byte order mark before UTF-8 text; it is not content
        data = data[len(UTF8_BOM):]
    if not data or data.isspace():  # isspace stops at the first other byte; strip() would copy
        raise BodyError(400, "the body is empty; send the bundle as a JSON object")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise BodyError(400, f"the body is not valid JSON: {_explain(data, error)}") from None


def _explain(data: bytes, error: orjson.JSONDecodeError) -> str:
    """What is wrong with a body orjson refused, and what to do, without quoting the body."""
    position = error.pos
    if "UTF-8" in error.msg:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            position = bad.start
        return (f"it is not UTF-8 text (invalid byte at offset {position}); "
                "encode the body as UTF-8")
    if "surrogate" in error.msg:
        return (f"a string holds a lone UTF-16 surrogate escape (at offset {position}); "
                "send valid Unicode text")
    rest = data[position:position + 10].lstrip(b"-")
    if rest.startswith((b"NaN", b"Infinity", b"nan", b"inf", b"Inf")) or "infinity" in error.msg:
        return (f"NaN and Infinity are not JSON numbers (at offset {position}); "
                "send finite numbers, or null for a missing value")
    if "depth" in error.msg or "recursion" in error.msg.lower():
        return f"arrays and objects are nested more than {ORJSON_MAX_DEPTH} deep; send a flatter document"
    return f"{error.msg} at offset {position}; send the bundle as a JSON object"


def check_shape(document: Any, data_size: int, limits: BodyLimits) -> None:
    """Refuse (400) a parsed document nested deeper or holding longer strings than ``limits``.

    ``data_size`` is the size of the JSON text, which lets the common case skip the walk:
    no string can be longer than the text it came from.
    """
    max_depth = limits.max_json_depth
    max_chars = limits.max_string_chars
    check_strings = data_size > max_chars
    if type(document) is not dict and type(document) is not list:
        if check_strings and type(document) is str and len(document) > max_chars:
            raise BodyError(400, _too_long(max_chars, "a string"))
        return None
    stack = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise BodyError(400, f"the body nests arrays and objects more than {max_depth} deep; "
                                 "send a flatter document")
        if type(node) is dict:
            if check_strings:
                for key in node:
                    if len(key) > max_chars:
                        raise BodyError(400, _too_long(max_chars, "an object key"))
            children = node.values()
        else:
            children = node
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
            elif check_strings and kind is str and len(child) > max_chars:
                raise BodyError(400, _too_long(max_chars, "a string"))
    return None


def _too_long(limit: int, what: str) -> str:
    return f"{what} in the body is longer than {limit} characters; no field takes that much, send less"


def load_body(data: bytes, content_encoding: str | None, limits: BodyLimits) -> Any:
    """Decode, parse and check a body as read; :class:`BodyError` says why it cannot be used."""
    data = decode_body(data, content_encoding, limits)
    document = parse_json(data)
    # a document with no more brackets than the depth limit cannot be nested too deep, and
    # one no longer than the string limit cannot hold too long a string: most bodies skip
    # the walk (counting bytes runs in C)
    if len(data) > limits.max_string_chars or data.count(b"[") + data.count(b"{") > limits.max_json_depth:
        check_shape(document, len(data), limits)
    return document


def read_json(environ: dict, limits: BodyLimits) -> Any:
    """Read, decode, parse and check the JSON body of a request (its WSGI ``environ``);
    :class:`BodyError` says why not."""
    return load_body(read_body(environ, limits.max_body_bytes), environ.get("HTTP_CONTENT_ENCODING"), limits)
