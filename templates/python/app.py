"""{{name}}: a wasm-jobs job in Python (componentize-py).

`run` gets one queue message; returning deletes it. To fail on purpose:

    raise Err(Failure_Fatal("why"))                  dead-letter it now: retrying cannot help
    raise Err(Failure_Retry(RetryInfo("why", 30)))   try again in 30 s (None: after the
                                                     queue's visibility timeout)

Any other exception traps the call: the message is retried, the traceback
(your stderr) is the reason, and on the last attempt the queue allows the
worker dead-letters it with that reason. Catch what you can decide about.

The body is a name; the job publishes "GREETING, NAME!" as its result
(GREETING from the environment when the tenant's policy passes it through,
else "Hello"). An empty body is fatal; "retry" asks for a retry.
"""

import os
import sys

import wit_world
from wit_world.imports import output
from wit_world.imports.types import Failure_Fatal, Failure_Retry, Message, RetryInfo
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def run(self, msg: Message) -> None:
        name = msg.body.strip()
        if not name:
            raise Err(Failure_Fatal("the body is empty: send a name"))
        if name == "retry":
            raise Err(Failure_Retry(RetryInfo("asked to retry", 1)))
        attributes = dict(msg.attributes)  # name -> value, all text
        greeting = os.environ.get("GREETING", "Hello")
        result = f"{greeting}, {name}!"
        # stdout and stderr go to the worker's log with the message id.
        print(f"attempt {msg.receive_count}, {len(attributes)} attributes: {result}")
        # The result goes to whoever asked for the outcome (reply-to,
        # `wasm-jobs send --wait`, `wasm-jobs exec`). Over the policy's size
        # limit it is refused with Err(reason): turn that into a failure.
        try:
            output.set(result.encode())
        except Err as refused:
            raise Err(Failure_Fatal(str(refused.value)))

    def on_exit(self, msg: Message, signal: int) -> None:
        # The worker running `run` for msg was stopped by `signal`: clean up.
        print(f"on-exit: message {msg.id} stopped by signal {signal}", file=sys.stderr)
