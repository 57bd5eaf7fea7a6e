"""The example wasm-jobs job in Python (componentize-py).

Body: JSON {"op": ...}
  {"op": "count", "text": "..."}          publish {"words": N} as the result
                                          (and print it to stdout), ok
  {"op": "retry", "delay": S, "reason": R} ask for a retry after S seconds
  {"op": "fail", "reason": R}              fatal: dead-letter now
  {"op": "crash", "reason": R}             raise RuntimeError(R): the call traps with
                                          the traceback as its reason and is retried
  {"op": "fetch", "url": U}                GET U and publish
                                          {"status": S, "body": the first 200 characters};
                                          a refused or failed request is fatal
Malformed JSON or an unknown op is fatal: retrying cannot help.

Returning gives `ok`; raising Err(Failure_...) gives `err`:
  raise Err(Failure_Fatal("why"))                    dead-letter now
  raise Err(Failure_Retry(RetryInfo("why", 30)))     retry after 30 s (None: later)
Any other exception traps the call, which is retried like a crash. To decide
yourself, catch and re-raise, as `fetch` below does:
  try: ...
  except Exception as e: raise Err(Failure_Retry(RetryInfo(str(e), None)))
"""

import json
import sys
from urllib.parse import urlsplit

import wit_world
from wit_world.imports import outgoing_handler, output, streams
from wit_world.imports import wasi_http_types as http
from wit_world.imports.wasm_jobs_job_types import (
    Failure_Fatal,
    Failure_Retry,
    Message,
    RetryInfo,
)
from componentize_py_types import Err


def http_get(url: str) -> tuple[int, bytes]:
    """GET `url` through wasi:http: the host sends only what the tenant's
    policy grants (`http = [...]`); anything else fails with an error code."""
    parts = urlsplit(url)
    request = http.OutgoingRequest(http.Fields())
    request.set_scheme(http.Scheme_Https() if parts.scheme == "https" else http.Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    future = outgoing_handler.handle(request, None)
    with future.subscribe() as ready:
        ready.block()
    answer = future.get().value  # Ok(response) or Err(error code)
    if isinstance(answer, Err):
        raise RuntimeError(f"{answer.value}")
    response = answer.value
    status = response.status()
    body = response.consume()
    data = b""
    with body.stream() as stream:
        while True:
            try:
                data += stream.blocking_read(64 * 1024)
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                raise RuntimeError(f"reading the response: {e.value}")
    return status, data


class WitWorld(wit_world.WitWorld):
    def run(self, msg: Message) -> None:
        try:
            job = json.loads(msg.body)
        except ValueError as e:
            raise Err(Failure_Fatal(f"malformed JSON: {e}"))
        if not isinstance(job, dict):
            raise Err(Failure_Fatal("malformed JSON: expected an object"))
        op = job.get("op")
        if op == "count":
            words = len(str(job.get("text", "")).split())
            result = json.dumps({"words": words})
            print(result)
            # The result goes to whoever asked for the outcome (reply-to,
            # `wasm-jobs send --wait`, `wasm-jobs exec`). One over the
            # policy's size limit is refused with Err(reason); let no Err
            # escape `run` except a Failure, or the call traps.
            try:
                output.set(result.encode())
            except Err as refused:
                raise Err(Failure_Fatal(str(refused.value)))
            return None
        if op == "retry":
            delay = job.get("delay")
            reason = str(job.get("reason", "asked to retry"))
            raise Err(Failure_Retry(RetryInfo(reason, int(delay) if delay is not None else None)))
        if op == "fail":
            raise Err(Failure_Fatal(str(job.get("reason", "asked to fail"))))
        if op == "crash":
            # Any exception but Err(Failure_...) traps the call: Python
            # prints its traceback to stderr, the worker puts the last lines
            # in the outcome, the message is retried, and on the last
            # attempt the queue allows it is dead-lettered with them.
            raise RuntimeError(str(job.get("reason", "crash")))
        if op == "fetch":
            url = str(job.get("url", ""))
            try:
                status, body = http_get(url)
            except Exception as e:
                raise Err(Failure_Fatal(f"fetch {url} failed: {e}"))
            result = json.dumps({"status": status, "body": body.decode(errors="replace")[:200]})
            try:
                output.set(result.encode())
            except Err as refused:
                raise Err(Failure_Fatal(str(refused.value)))
            return None
        raise Err(Failure_Fatal(f"unknown op {op!r}"))

    def on_exit(self, msg: Message, signal: int) -> None:
        print(f"on-exit: message {msg.id} stopped by signal {signal}", file=sys.stderr)
        return None
