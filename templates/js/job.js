// {{name}}: a wasm-jobs job in JavaScript (componentize-js).
//
// `run` gets one queue message; returning deletes it. To fail on purpose,
// throw what these helpers make (they check their arguments, so a typo
// fails loudly the first time that line runs, not silently later):
//   throw fatal("why")                           dead-letter it now: retrying cannot help
//   throw retry("why", { delaySeconds: 30 })     try again in 30 s (no option: after the
//                                                queue's visibility timeout)
// Anything else thrown traps the call: the message is retried, the error
// text is the reason, and on the last attempt the queue allows the worker
// dead-letters it with that reason. Catch what you can decide about:
//   try { ... } catch (e) { throw retry(`upstream: ${e.message}`); }
//
// The body is a name; the job publishes "Hello, NAME!" as its result. An
// empty body is fatal; "retry" asks for a retry. (Environment variables need
// the wasi:cli world: see README.md.)

import { set as publish } from "wasm-jobs:job/output@0.2.0";

function fatal(reason) {
  return { tag: "fatal", val: String(reason) };
}

function retry(reason, options = {}) {
  for (const key of Object.keys(options)) {
    if (key !== "delaySeconds") {
      throw new TypeError(`retry(): unknown option "${key}"; the only one is "delaySeconds"`);
    }
  }
  const { delaySeconds } = options;
  if (delaySeconds !== undefined && !(Number.isInteger(delaySeconds) && delaySeconds >= 0 && delaySeconds <= 43200)) {
    throw new TypeError(`retry(): delaySeconds must be a whole number of seconds, 0 to 43200, not ${delaySeconds}`);
  }
  return { tag: "retry", val: { reason: String(reason), delaySeconds } };
}

// A failure thrown by hand must have exactly the fields the host reads; a
// misspelled one (`delay_seconds`) becomes an error that says so.
function checked(thrown) {
  if (thrown === null || typeof thrown !== "object" || !("tag" in thrown)) return thrown;
  const shape = JSON.stringify(thrown);
  const fields = (o, allowed) => Object.keys(o).every((k) => allowed.includes(k));
  if (thrown.tag === "fatal" && fields(thrown, ["tag", "val"]) && typeof thrown.val === "string") return thrown;
  if (thrown.tag === "retry" && fields(thrown, ["tag", "val"]) && thrown.val !== null && typeof thrown.val === "object"
      && typeof thrown.val.reason === "string" && fields(thrown.val, ["reason", "delaySeconds"])) return thrown;
  return new TypeError(`not a failure: ${shape}; use fatal(reason) or retry(reason, { delaySeconds })`);
}

async function handle(msg) {
  const name = msg.body.trim();
  if (name === "") throw fatal("the body is empty: send a name");
  if (name === "retry") throw retry("asked to retry", { delaySeconds: 1 });
  const attributes = Object.fromEntries(msg.attributes); // name -> value, all text
  const result = `Hello, ${name}!`;
  // stdout and stderr go to the worker's log with the message id.
  console.log(`attempt ${msg.receiveCount}, ${Object.keys(attributes).length} attributes: ${result}`);
  // The result goes to whoever asked for the outcome (reply-to, `wasm-jobs
  // send --wait`, `wasm-jobs exec`); over the policy's size limit `publish`
  // throws the reason.
  try {
    publish(new TextEncoder().encode(result));
  } catch (refused) {
    throw fatal(refused.payload ?? refused);
  }
}

export async function run(msg) {
  try {
    await handle(msg);
  } catch (thrown) {
    throw checked(thrown);
  }
}

export function onExit(msg, signal) {
  // The worker running `run` for msg was stopped by `signal`: clean up.
  console.error(`on-exit: message ${msg.id} stopped by signal ${signal}`);
}
