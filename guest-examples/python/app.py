"""The example wasm-jobs job in Python (componentize-py).

Body: JSON {"op": ...}
  {"op": "count", "text": "..."}          publish {"words": N} as the result
                                          (and print it to stdout), ok
  {"op": "retry", "delay": S, "reason": R} ask for a retry after S seconds
  {"op": "fail", "reason": R}              fatal: dead-letter now
Malformed JSON or an unknown op is fatal: retrying cannot help.
"""

import json
import sys

import wit_world
from wit_world.imports import output
from wit_world.imports.types import Failure_Fatal, Failure_Retry, Message, RetryInfo
from componentize_py_types import Err


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
        raise Err(Failure_Fatal(f"unknown op {op!r}"))

    def on_exit(self, msg: Message, signal: int) -> None:
        print(f"on-exit: message {msg.id} stopped by signal {signal}", file=sys.stderr)
        return None
