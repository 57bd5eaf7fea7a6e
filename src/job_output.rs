//! A job's published result: the host side of `wasm-jobs:job/output`
//! (`set(data)`, last call wins, at most the policy's `max_job_output`
//! bytes).
//!
//! The linker definition is made wherever components are linked (the fork
//! server, its helpers, the CLI); `set` runs in the process that makes the
//! call (a worker child, or the CLI for `wasm-jobs exec`). The guest's bytes
//! are checked against the limit while they are still in its linear memory,
//! so a refused `set` makes the host allocate nothing.

use crate::contract::OUTPUT_INTERFACE;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, WasmList};

/// A published result as reports and outcome messages carry it: in JSON,
/// `"output": TEXT` when the bytes are UTF-8, else `"output_base64": B64`
/// (flatten it into the enclosing object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published(pub Vec<u8>);

impl serde::Serialize for Published {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match std::str::from_utf8(&self.0) {
            Ok(text) => map.serialize_entry("output", text)?,
            Err(_) => map.serialize_entry(
                "output_base64",
                &base64::engine::general_purpose::STANDARD.encode(&self.0),
            )?,
        }
        map.end()
    }
}

/// Default cap on a job's published result.
pub const DEFAULT_MAX_JOB_OUTPUT: usize = 256 * 1024;

/// What one call has published so far.
#[derive(Debug)]
pub(crate) struct JobOutput {
    limit: usize,
    data: Option<Vec<u8>>,
}

impl JobOutput {
    /// Nothing published yet; `set` accepts at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        JobOutput { limit, data: None }
    }

    /// The result, if the job published one.
    pub(crate) fn take(&mut self) -> Option<Vec<u8>> {
        self.data.take()
    }

    /// The guest's `set` of `len` bytes, copied by `copy` only if allowed.
    fn set(&mut self, len: usize, copy: impl FnOnce() -> Vec<u8>) -> Result<(), String> {
        if len > self.limit {
            return Err(format!(
                "output of {len} bytes refused: this job may publish at most {} bytes \
                 (the tenant policy's max_job_output)",
                self.limit
            ));
        }
        self.data = Some(copy());
        Ok(())
    }
}

/// Host state that keeps a call's [`JobOutput`].
pub(crate) trait HasJobOutput {
    /// The output of the call this store makes.
    fn job_output(&mut self) -> &mut JobOutput;
}

/// Define `wasm-jobs:job/output` in `linker`.
pub(crate) fn add_to_linker<T: HasJobOutput + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    linker.instance(OUTPUT_INTERFACE)?.func_wrap(
        "set",
        |mut store: StoreContextMut<'_, T>, (data,): (WasmList<u8>,)| {
            let len = data.len();
            let limit = store.data_mut().job_output().limit;
            let copied = (len <= limit).then(|| data.as_le_slice(&store).to_vec());
            let result = store
                .data_mut()
                .job_output()
                .set(len, || copied.unwrap_or_default());
            if let Err(why) = &result {
                tracing::warn!(bytes = len, limit, "{why}");
            }
            Ok((result,))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_text_when_they_can_be() {
        #[derive(serde::Serialize)]
        struct Report {
            #[serde(flatten)]
            output: Option<Published>,
        }
        let json = |output| serde_json::to_value(Report { output }).unwrap();
        assert_eq!(json(None), serde_json::json!({}));
        assert_eq!(
            json(Some(Published("é ok".into()))),
            serde_json::json!({"output": "é ok"})
        );
        assert_eq!(
            json(Some(Published(vec![0xff, 0]))),
            serde_json::json!({"output_base64": "/wA="})
        );
    }

    #[test]
    fn the_last_set_within_the_limit_wins() {
        let mut out = JobOutput::new(4);
        assert_eq!(out.set(2, || b"ab".to_vec()), Ok(()));
        assert_eq!(out.set(4, || b"wxyz".to_vec()), Ok(()));
        let err = out.set(5, || unreachable!("refused bytes are not copied"));
        assert!(err.unwrap_err().contains("5 bytes refused"));
        assert_eq!(out.take().as_deref(), Some(&b"wxyz"[..]));
        assert_eq!(out.take(), None);
    }
}
