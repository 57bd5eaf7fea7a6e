//! How a job's imports are satisfied: WASI 0.2 from `wasmtime-wasi` and
//! `wasi:http` from `wasmtime-wasi-http` with this host's sender
//! (`crate::http`) (any 0.2.x version the guest names resolves by semver),
//! the types-only
//! `wasm-jobs:job/types` instance (0.2.0 and 0.1.0), `wasm-jobs:job/output`
//! (`crate::job_output`), and, for WASI interfaces wasmtime-wasi does
//! not implement (a newer or unknown WASI package), stubs that fail the call
//! with "capability denied" if the job ever uses them.
//!
//! The executor builds one base linker per engine and, per component that
//! needs them, a clone with the stubs. This happens where components are
//! loaded: in the fork server (worker children inherit the linked, loaded
//! job), its compile helpers, and the CLI process (`exec`, `module`).

use crate::contract::TYPES_INTERFACES;
use crate::job_output::{self, HasJobOutput};
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceType};
use wasmtime_wasi::WasiView;
use wasmtime_wasi_http::WasiHttpView;

/// WASI packages whose 0.2.x interfaces wasmtime-wasi(-http) implements.
const IMPLEMENTED_WASI: [&str; 7] = [
    "wasi:http/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:cli/",
    "wasi:filesystem/",
    "wasi:random/",
    "wasi:sockets/",
];

/// The linker every job starts from.
pub(crate) fn base_linker<T: WasiView + WasiHttpView + HasJobOutput + 'static>(
    engine: &Engine,
) -> wasmtime::Result<Linker<T>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    // Records and variants need no definitions; the instances must exist.
    for types in TYPES_INTERFACES {
        linker.instance(types)?;
    }
    job_output::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Imports of `component` that are WASI but not implemented here.
pub(crate) fn unimplemented_wasi_imports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("wasi:"))
        .filter(|name| !IMPLEMENTED_WASI.iter().any(|p| name.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// Define each unimplemented WASI import of `component` in `linker` as stubs
/// whose functions fail with "capability denied" when called.
pub(crate) fn stub_unimplemented_wasi<T: 'static>(
    linker: &mut Linker<T>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    let wanted = unimplemented_wasi_imports(engine, component);
    let ty = component.component_type();
    let mut next_resource_id = 0u32;
    for (name, item) in ty.imports(engine) {
        if !wanted.iter().any(|w| w == name) {
            continue;
        }
        match item.ty {
            ComponentItem::ComponentInstance(instance) => {
                let mut li = linker.instance(name)?;
                for (export, item) in instance.exports(engine) {
                    match item.ty {
                        ComponentItem::ComponentFunc(_) => {
                            let what = format!("{name}#{export}");
                            li.func_new(export, move |_, _, _, _| {
                                wasmtime::bail!(
                                    "capability denied: `{what}` is not available to jobs"
                                )
                            })?;
                        }
                        ComponentItem::Resource(_) => {
                            next_resource_id += 1;
                            li.resource(
                                export,
                                ResourceType::host_dynamic(next_resource_id),
                                |_, _| Ok(()),
                            )?;
                        }
                        _ => {}
                    }
                }
            }
            ComponentItem::ComponentFunc(_) => {
                let what = name.to_owned();
                linker.root().func_new(name, move |_, _, _, _| {
                    wasmtime::bail!("capability denied: `{what}` is not available to jobs")
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}
