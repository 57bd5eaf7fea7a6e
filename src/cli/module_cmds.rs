//! `wasm-jobs module push|list|inspect|rm`: the module registry from the
//! command line (see `crate::registry`), in the CLI process.

use super::args::parse_bytes;
use crate::engine::EngineSettings;
use crate::executor::Executor;
use crate::paths;
use crate::registry::{DEFAULT_MAX_MODULE_BYTES, DEFAULT_TENANT, Registry};
use std::path::PathBuf;

/// Where the registry and the compiled-artifact cache are.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct RegistryLocation {
    /// Registry directory (default: `<data dir>/registry`).
    #[arg(long, global = true, env = "WASM_JOBS_REGISTRY")]
    registry: Option<PathBuf>,
    /// Data directory (holds the compiled-artifact cache).
    #[arg(long, global = true, env = "WASM_JOBS_HOME")]
    data_dir: Option<PathBuf>,
}

impl RegistryLocation {
    fn data_dir(&self) -> PathBuf {
        paths::data_dir(self.data_dir.as_deref())
    }

    fn registry_dir(&self) -> PathBuf {
        self.registry
            .clone()
            .unwrap_or_else(|| self.data_dir().join("registry"))
    }

    fn registry(&self) -> Registry {
        Registry::new(self.registry_dir())
    }

    /// wasm-jobs' own directories, which no tenant directory may overlap.
    pub(super) fn own_dirs(&self) -> Vec<(&'static str, PathBuf)> {
        paths::own_dirs(&self.data_dir(), &self.registry_dir())
    }

    /// An executor whose artifact cache is the data directory's.
    fn executor(&self) -> anyhow::Result<Executor> {
        Executor::new(
            EngineSettings::default(),
            paths::compiled_dir(&self.data_dir()),
        )
    }
}

/// The `wasm-jobs module` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(super) enum ModuleCommand {
    /// Validate, compile and store a component under a name.
    Push {
        file: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        /// Largest component accepted.
        #[arg(long, value_parser = parse_bytes, default_value_t = DEFAULT_MAX_MODULE_BYTES)]
        max_size: u64,
    },
    /// The latest version of every module.
    List {
        /// Only this tenant's modules.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Exports, imports, size, digest and compiled-artifact status.
    Inspect {
        /// NAME or NAME@sha256:HEX.
        reference: String,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a module (all its versions) from a tenant.
    Rm {
        name: String,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
    },
}

/// Run one `module` subcommand.
pub(super) fn run(loc: &RegistryLocation, cmd: ModuleCommand) -> anyhow::Result<u8> {
    let registry = loc.registry();
    match cmd {
        ModuleCommand::Push {
            file,
            name,
            tenant,
            max_size,
        } => {
            let executor = loc.executor()?;
            let (v, source) = registry.push(&executor, &file, &name, &tenant, max_size)?;
            let compiled = match source {
                crate::artifact_cache::CompileSource::Cached => "already compiled".to_owned(),
                crate::artifact_cache::CompileSource::Compiled { took } => {
                    format!("compiled in {:.0} ms", took.as_secs_f64() * 1e3)
                }
            };
            println!(
                "pushed {}@sha256:{} for tenant {} ({} bytes, {compiled})",
                v.name, v.digest, v.tenant, v.size
            );
        }
        ModuleCommand::List { tenant, json } => {
            let modules = registry.list(tenant.as_deref())?;
            if json {
                println!("{}", serde_json::to_string(&modules)?);
            } else {
                for m in modules {
                    println!(
                        "{:<12} {:<24} sha256:{} {:>10} bytes",
                        m.tenant, m.name, m.digest, m.size
                    );
                }
            }
        }
        ModuleCommand::Inspect {
            reference,
            tenant,
            json,
        } => {
            let resolved = registry.resolve(&reference, &tenant)?;
            let bytes = registry.read(&resolved)?;
            let executor = loc.executor()?;
            let compiled = executor.cache().contains(executor.engine(), &bytes);
            let (imports, exports) = executor.describe(&bytes)?;
            let v = &resolved.version;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "name": v.name, "tenant": v.tenant, "digest": v.digest, "size": v.size,
                        "pushed_at_ms": v.pushed_at_ms, "compiled": compiled,
                        "imports": imports, "exports": exports,
                    })
                );
            } else {
                println!("{}@sha256:{} (tenant {})", v.name, v.digest, v.tenant);
                println!("  size      {} bytes", v.size);
                println!(
                    "  compiled  {}",
                    if compiled {
                        "yes (artifact cached on this machine)"
                    } else {
                        "no (compiled now)"
                    }
                );
                println!("  exports   {}", exports.join(", "));
                println!("  imports   {}", imports.join(", "));
            }
        }
        ModuleCommand::Rm { name, tenant } => {
            registry.remove(&name, &tenant)?;
            println!("removed {name} from tenant {tenant}");
        }
    }
    Ok(0)
}
