// The example wasm-jobs job in JavaScript (componentize-js).
//
// Body: JSON {"op": ...}
//   {"op": "count", "text": "..."}          publish {"words": N} as the result
//                                           (and print it to stdout), ok
//   {"op": "retry", "delay": S, "reason": R} ask for a retry after S seconds
//   {"op": "fail", "reason": R}              fatal: dead-letter now
//   {"op": "crash", "reason": R}             throw new Error(R) out of `run`: the call
//                                           traps ("... received `Error: R` ..."), the
//                                           message is retried, and on the last attempt
//                                           the queue allows the worker dead-letters it
//                                           with that text
//   {"op": "fetch", "url": U[, "post": N]}  fetch(U) (a POST of N bytes with "post") and publish
//                                           {"status": S, "body": the first 200 characters};
//                                           a refused or failed request is fatal
// Malformed JSON or an unknown op is fatal: retrying cannot help.
//
// Returning normally gives `ok`; throwing a `failure` value gives `err`:
//   throw { tag: "fatal", val: "why" }                             dead-letter now
//   throw { tag: "retry", val: { reason: "why", delaySeconds: 30 } }  retry later
// (exactly these field names: `delay_seconds` would be ignored). Anything
// else thrown traps the call, which is retried like a crash. To decide
// yourself, catch and rethrow, as `fetch` below does:
//   try { ... } catch (e) { throw { tag: "retry", val: { reason: String(e) } }; }

// The result goes to whoever asked for the outcome (reply-to, `wasm-jobs
// send --wait`, `wasm-jobs exec`); `set` throws the reason when it is over
// the policy's size limit.
import { set as publish } from "wasm-jobs:job/output@0.2.0";

// `run` may be async (componentize-js waits for it): `fetch` goes through
// the host's wasi:http, which sends only what the tenant's policy grants.
export async function run(msg) {
  let job;
  try {
    job = JSON.parse(msg.body);
  } catch (e) {
    throw { tag: "fatal", val: `malformed JSON: ${e.message}` };
  }
  if (job === null || typeof job !== "object" || Array.isArray(job)) {
    throw { tag: "fatal", val: "malformed JSON: expected an object" };
  }
  switch (job.op) {
    case "count": {
      const text = String(job.text ?? "");
      const words = text.split(/\s+/).filter((w) => w.length > 0).length;
      const result = JSON.stringify({ words });
      console.log(result);
      try {
        publish(new TextEncoder().encode(result));
      } catch (refused) {
        // Anything thrown out of `run` but a failure traps the call.
        throw { tag: "fatal", val: String(refused.payload ?? refused) };
      }
      return;
    }
    case "retry":
      throw {
        tag: "retry",
        val: {
          reason: String(job.reason ?? "asked to retry"),
          delaySeconds: job.delay === undefined ? undefined : Number(job.delay),
        },
      };
    case "fail":
      throw { tag: "fatal", val: String(job.reason ?? "asked to fail") };
    case "crash":
      throw new Error(String(job.reason ?? "crash"));
    case "fetch": {
      let status, body;
      try {
        // With "post": N, POST a body of N bytes instead of a GET.
        const init = job.post === undefined ? {} : { method: "POST", body: "x".repeat(Number(job.post)) };
        const response = await fetch(String(job.url), init);
        status = response.status;
        body = await response.text();
      } catch (e) {
        // A URL the policy does not grant, a limit hit, a network error.
        throw { tag: "fatal", val: `fetch ${job.url} failed: ${e.message ?? e}` };
      }
      const result = JSON.stringify({ status, body: body.slice(0, 200) });
      try {
        publish(new TextEncoder().encode(result));
      } catch (refused) {
        throw { tag: "fatal", val: String(refused.payload ?? refused) };
      }
      return;
    }
    default:
      throw { tag: "fatal", val: `unknown op ${JSON.stringify(job.op)}` };
  }
}

export function onExit(msg, signal) {
  console.error(`on-exit: message ${msg.id} stopped by signal ${signal}`);
}
