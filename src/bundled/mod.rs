//! Jobs that ship inside the binary, built without any guest toolchain: the
//! example job of `wasm-jobs demo` (`demo_job.wat`, componentized at run
//! time by [`crate::componentize`]). Used by the CLI process, which writes
//! the component to a file for the worker to load.

/// The demo job as a component: it counts a body's words, asks for a retry
/// when the body starts with `retry` and fails fatally on `fatal`.
pub(crate) fn demo_job_component() -> anyhow::Result<Vec<u8>> {
    crate::componentize::job_component_from_core(include_bytes!("demo_job.wat"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::JobMessage;
    use crate::engine::EngineSettings;
    use crate::executor::{Call, Executor};
    use crate::outcome::Outcome;
    use crate::sandbox::SandboxPolicy;

    #[test]
    fn the_demo_job_counts_retries_and_fails_on_cue() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::new(EngineSettings::default(), dir.path()).unwrap();
        let job = ex.load_bytes(&demo_job_component().unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let run = |body: &str| {
            let msg = JobMessage {
                id: "m".into(),
                body: body.into(),
                attributes: vec![],
                receive_count: 1,
            };
            rt.block_on(ex.call(&job, &msg, Call::Run, &SandboxPolicy::default()))
                .unwrap()
                .outcome
        };
        assert_eq!(run("the quick brown fox"), Outcome::Ok);
        assert_eq!(
            run("retry please"),
            Outcome::Retry {
                reason: "asked to retry".into(),
                delay_seconds: Some(1)
            }
        );
        assert_eq!(
            run("fatal error"),
            Outcome::Fatal {
                reason: "asked to fail".into()
            }
        );
    }
}
