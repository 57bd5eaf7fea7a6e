//! The job contract (`wit/job.wit`) on the host side: the generated bindings,
//! the host's own message type, and the check that a component really targets
//! the `wasm-jobs:job/job` world.
//!
//! The executor calls the exports through the generated `bindings::Job`, in
//! each worker child (and in the CLI process for `wasm-jobs exec`); the
//! checks run wherever components are loaded (the fork server, its compile
//! helpers, the CLI). The worker parent builds [`JobMessage`]s and never
//! sees generated types.

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

/// Generated from `wit/job.wit`. Exports are async on the host side so that a
/// call can be cancelled by its wall-time limit even while the guest is blocked
/// in a WASI host call.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "job",
        exports: { default: async },
    });
}

use bindings::wasm_jobs::job::types as wit;

/// The name of the world every job component must target.
pub(crate) const WORLD: &str = "wasm-jobs:job/job@0.2.0";
/// The types-only interface of the contract, in the version this host
/// speaks and in every earlier one whose jobs still run here (0.1.0 is the
/// same world without `output`; its records are the same, so its `run` and
/// `on-exit` exports type-check against the 0.2.0 bindings).
pub(crate) const TYPES_INTERFACES: [&str; 2] =
    ["wasm-jobs:job/types@0.2.0", "wasm-jobs:job/types@0.1.0"];
/// Where a job publishes its result (`crate::job_output`).
pub(crate) const OUTPUT_INTERFACE: &str = "wasm-jobs:job/output@0.2.0";

/// A message as handed to a job: the host-side twin of `types.message`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobMessage {
    /// The queue's message id; stable across redeliveries.
    pub id: String,
    /// The body, exactly as sent.
    pub body: String,
    /// User attributes as (name, text): Binary values in base64.
    pub attributes: Vec<(String, String)>,
    /// How many times the queue has delivered it: 1 on first delivery.
    pub receive_count: u32,
}

impl JobMessage {
    pub(crate) fn to_wit(&self) -> wit::Message {
        wit::Message {
            id: self.id.clone(),
            body: self.body.clone(),
            attributes: self.attributes.clone(),
            receive_count: self.receive_count,
        }
    }
}

/// Why a file is not a usable job component.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly file (no `\\0asm` header)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component; wrap it with \
         `wasm-tools component new` (see guest-examples/README.md)"
    )]
    CoreModule,
    /// The component failed to validate, compile or link; the text says why.
    #[error("the component is invalid: {0:#}")]
    Invalid(String),
    /// The component lacks the `run` or `on-exit` export, or has it with
    /// the wrong type.
    #[error("the component does not target {WORLD}: {problem}; it exports [{exports}]")]
    WrongWorld {
        /// What is wrong.
        problem: String,
        /// The names it does export, comma-separated.
        exports: String,
    },
    /// The component imports an interface wasm-jobs does not provide.
    #[error(
        "the component imports `{0}`, which wasm-jobs does not provide \
         (a job may import WASI 0.2 interfaces and the interfaces of {WORLD} only)"
    )]
    UnknownImport(String),
}

/// Cheap header check before compiling: a clear error for a core module or
/// for bytes that are not WebAssembly at all.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), ContractError> {
    if wasmparser::Parser::is_component(bytes) {
        Ok(())
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        Err(ContractError::CoreModule)
    } else {
        Err(ContractError::NotWasm)
    }
}

/// Check a compiled component's imports and exports against the contract.
pub(crate) fn check_world(engine: &Engine, component: &Component) -> Result<(), ContractError> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        if !import_allowed(name) {
            return Err(ContractError::UnknownImport(name.to_owned()));
        }
    }
    let exports: Vec<(String, ComponentItem)> = ty
        .exports(engine)
        .map(|(n, item)| (n.to_owned(), item.ty))
        .collect();
    let names = || {
        exports
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for wanted in ["run", "on-exit"] {
        match exports.iter().find(|(n, _)| n == wanted) {
            Some((_, ComponentItem::ComponentFunc(_))) => {}
            Some(_) => {
                return Err(ContractError::WrongWorld {
                    problem: format!("export `{wanted}` is not a function"),
                    exports: names(),
                });
            }
            None => {
                return Err(ContractError::WrongWorld {
                    problem: format!("missing export `{wanted}`"),
                    exports: names(),
                });
            }
        }
    }
    Ok(())
}

fn import_allowed(name: &str) -> bool {
    name.starts_with("wasi:") || TYPES_INTERFACES.contains(&name) || name == OUTPUT_INTERFACE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_check_tells_modules_from_components() {
        assert!(matches!(
            check_header(b"hello"),
            Err(ContractError::NotWasm)
        ));
        let core = wat::parse_str("(module)").unwrap();
        assert!(matches!(
            check_header(&core),
            Err(ContractError::CoreModule)
        ));
        let component = wat::parse_str("(component)").unwrap();
        assert!(check_header(&component).is_ok());
    }

    #[test]
    fn only_wasi_and_the_types_interface_may_be_imported() {
        assert!(import_allowed("wasi:cli/environment@0.2.0"));
        assert!(import_allowed("wasi:http/outgoing-handler@0.2.3"));
        assert!(import_allowed("wasm-jobs:job/types@0.1.0"));
        assert!(import_allowed("wasm-jobs:job/types@0.2.0"));
        assert!(import_allowed("wasm-jobs:job/output@0.2.0"));
        assert!(!import_allowed("wasm-jobs:job/output@0.3.0"));
        assert!(!import_allowed("acme:secrets/vault"));
    }
}
