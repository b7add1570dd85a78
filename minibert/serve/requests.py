"""What a request may hold, and a refusal's shape in each API: the body read within its size limit, options
checked against their JSON types, inputs as texts or token ids, and ApiError answered as OpenAI's or TEI's
error object."""

import asyncio
import json

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from ..errors import InputError
from .engine import TooLong


class ApiError(Exception):
    """A refusal: status, message, and the kind, which picks each API's error type."""

    def __init__(self, status, message, kind, param=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


# kind -> (OpenAI type, OpenAI code, TEI error_type)
KINDS = {"invalid": ("invalid_request_error", None, "validation"),
         "invalid_json": ("invalid_request_error", "invalid_json", "validation"),
         "empty": ("invalid_request_error", "empty_input", "empty"),
         "too_large": ("invalid_request_error", "payload_too_large", "validation"),
         "timeout": ("invalid_request_error", "request_timeout", "validation"),
         "unauthorized": ("invalid_request_error", "invalid_api_key", "unauthorized"),
         "not_found": ("invalid_request_error", "not_found", "not_found"),
         "overloaded": ("requests", "rate_limit_exceeded", "overloaded"),
         "unsupported": ("invalid_request_error", "not_implemented", "backend"),
         "stopping": ("server_error", "service_unavailable", "backend"),
         "server": ("server_error", None, "backend")}


def error_response(error: ApiError, path: str) -> JSONResponse:
    openai_type, code, tei_type = KINDS[error.kind]
    status = error.status
    if path.startswith("/v1/"):
        if status == 422:
            status = 400                  # OpenAI answers every malformed request 400
        body = {"error": {"message": error.message, "type": openai_type, "param": error.param, "code": code}}
    else:
        body = {"error": error.message, "error_type": tei_type}
    # 408: the rest of a late body is never read, so the connection closes at once (not at keep-alive's end).
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {"Connection": "close"} if status == 408 else None
    return JSONResponse(body, status_code=status, headers=headers)


def refusal(e: InputError, param="input") -> ApiError:
    if isinstance(e, TooLong):
        return ApiError(413, str(e), "too_large", param)
    return ApiError(422, str(e), "invalid", param)


# ---- request bodies ----------------------------------------------------------------------------------------

async def read_json(request, limit, seconds):
    """The body as a JSON object, refused past `limit` bytes: read on (kept only up to the limit) so that a
    client still sending hears the 413 rather than a reset connection, but at most `limit` bytes more, so that
    a body without end (chunked) does not keep the server reading it forever; and refused (408) when it has
    not all arrived within `seconds`, so that a client sending a byte a minute does not hold its connection
    (and the server's memory for it) for as long as it likes."""
    try:
        body = await asyncio.wait_for(read_body(request, limit), seconds)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {seconds:g} s (--body-timeout)",
                       "timeout") from None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})", "invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(422, f"the request body must be a JSON object, found {type(value).__name__}", "invalid")
    return value


async def read_body(request, limit):
    declared = request.headers.get("content-length")
    over = declared is not None and declared.isdigit() and int(declared) > limit
    body, read = bytearray(), 0
    try:
        async for chunk in request.stream():
            read += len(chunk)
            if not over:
                body += chunk
                over = len(body) > limit
            if read > 2 * limit:
                break                       # the connection closes after the 413: the rest is never read
    except ClientDisconnect:                # the client's doing, not a fault of the server: no traceback
        raise ApiError(400, "the client closed the connection before its request body ended", "invalid") from None
    if over:
        raise ApiError(413, f"the request body is over the server's limit of {limit} bytes (--max-body-bytes)",
                       "too_large")
    return bytes(body)


def option(body, name, kind, default=None, choices=None, low=None, high=None):
    """body[name] checked against its JSON type (bool is not an int), range or choices; absent or null ->
    default."""
    value = body.get(name)
    if value is None:
        return default
    names = {bool: "true or false", int: "an integer", str: "a string"}
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(422, f"{name} must be {names[kind]}, found {json.dumps(value)[:80]}", "invalid", name)
    if choices is not None and value.lower() not in choices:
        raise ApiError(422, f"{name} must be one of {', '.join(choices)}, found {value!r}", "invalid", name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(422, f"{name} must be between {low} and {high}, found {value}", "invalid", name)
    return value.lower() if choices is not None else value


def is_id(x):
    return isinstance(x, int) and not isinstance(x, bool)


def parse_inputs(value, param, max_batch):
    """A string, a list of strings, a list of token ids or a list of lists of ids -> ("texts", [str], nested)
    or ("ids", [[int]], nested); anything else an ApiError naming the place."""
    if value is None:
        raise ApiError(400, f"{param} is required: a string or a list of strings (or of token ids)", "empty", param)
    if isinstance(value, str):
        return "texts", [value], False
    if not isinstance(value, list):
        raise ApiError(422, f"{param} must be a string or a list, found {json.dumps(value)[:80]}", "invalid", param)
    if not value:
        raise ApiError(400, f"{param} is an empty list: nothing to embed", "empty", param)
    if all(is_id(x) for x in value):
        return "ids", [value], False
    if len(value) > max_batch:
        raise ApiError(413, f"{param} holds {len(value)} inputs, more than the server's {max_batch} per request "
                       "(--max-client-batch-size); split the request", "too_large", param)
    if all(isinstance(x, str) for x in value):
        return "texts", value, True
    if all(isinstance(x, list) for x in value):
        for i, ids in enumerate(value):
            bad = next((j for j, x in enumerate(ids) if not is_id(x)), None)
            if bad is not None:
                raise ApiError(400, f"{param}[{i}][{bad}] = {json.dumps(ids[bad])[:40]} is not a token id (an "
                               "integer)", "invalid", param)
        return "ids", value, True

    def category(x):
        return "text" if isinstance(x, str) else "id" if is_id(x) else "list" if isinstance(x, list) else None
    i = next(i for i, x in enumerate(value) if category(x) is None or category(x) != category(value[0]))
    raise ApiError(422, f"{param}[{i}] is {json.dumps(value[i])[:40]}: {param} must be strings, token ids or lists of "
                   "token ids, not a mix", "invalid", param)
