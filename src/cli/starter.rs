//! A job author's start, in the CLI process: `wasm-jobs new LANG NAME`
//! writes a job project from the templates in `templates/` (source with
//! `run`, `on-exit` and the failure conventions, a build script that works
//! wherever the folder is, a README, and the contract in `wit/`), and
//! `wasm-jobs wit` prints or writes the contract, with the WASI packages a
//! job needs to import WASI interfaces by name (`--wasi`). Everything is
//! embedded in the binary, so neither needs this repository.

use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The contract.
const JOB_WIT: &str = include_str!("../../wit/job.wit");

/// WASI 0.2.12's packages, as wasmtime-wasi 48 implements them (the
/// examples' `guest-examples/wit-http/deps`).
const WASI_DEPS: [(&str, &str); 7] = [
    (
        "cli.wit",
        include_str!("../../guest-examples/wit-http/deps/cli.wit"),
    ),
    (
        "clocks.wit",
        include_str!("../../guest-examples/wit-http/deps/clocks.wit"),
    ),
    (
        "filesystem.wit",
        include_str!("../../guest-examples/wit-http/deps/filesystem.wit"),
    ),
    (
        "http.wit",
        include_str!("../../guest-examples/wit-http/deps/http.wit"),
    ),
    (
        "io.wit",
        include_str!("../../guest-examples/wit-http/deps/io.wit"),
    ),
    (
        "random.wit",
        include_str!("../../guest-examples/wit-http/deps/random.wit"),
    ),
    (
        "sockets.wit",
        include_str!("../../guest-examples/wit-http/deps/sockets.wit"),
    ),
];

/// The world `wit --wasi` adds: the job world with WASI imports named, for
/// toolchains that import only what the world says (componentize-js).
const WASI_WORLD: &str = "\
/// The job world plus WASI interfaces imported by name: environment
/// variables (`wasi:cli/environment`) and outbound HTTP
/// (`wasi:http/outgoing-handler`). The host grants what the tenant's policy
/// allows and nothing else. Written by `wasm-jobs wit --wasi`.
package wasm-jobs:local;

world job-with-wasi {
    include wasm-jobs:job/job@0.2.0;
    import wasi:cli/environment@0.2.12;
    import wasi:http/outgoing-handler@0.2.12;
}
";

/// The languages `new` has a template for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum Lang {
    Js,
    Python,
    C,
    Rust,
}

impl Lang {
    /// The template's files: path in the project, contents, executable.
    fn files(self) -> &'static [(&'static str, &'static str, bool)] {
        match self {
            Lang::Js => &[
                ("job.js", include_str!("../../templates/js/job.js"), false),
                (
                    "package.json",
                    include_str!("../../templates/js/package.json"),
                    false,
                ),
                (
                    "build.sh",
                    include_str!("../../templates/js/build.sh"),
                    true,
                ),
            ],
            Lang::Python => &[
                (
                    "app.py",
                    include_str!("../../templates/python/app.py"),
                    false,
                ),
                (
                    "build.sh",
                    include_str!("../../templates/python/build.sh"),
                    true,
                ),
            ],
            Lang::C => &[
                ("job.c", include_str!("../../templates/c/job.c"), false),
                ("build.sh", include_str!("../../templates/c/build.sh"), true),
            ],
            Lang::Rust => &[
                (
                    "Cargo.toml",
                    include_str!("../../templates/rust/Cargo.toml"),
                    false,
                ),
                (
                    "src/lib.rs",
                    include_str!("../../templates/rust/src/lib.rs"),
                    false,
                ),
                (
                    "build.sh",
                    include_str!("../../templates/rust/build.sh"),
                    true,
                ),
            ],
        }
    }

    /// What the README says about this language: its name, source file and
    /// toolchain.
    fn about(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Lang::Js => (
                "JavaScript",
                "job.js",
                "Node.js and npm (componentize-js is installed on the first build)",
            ),
            Lang::Python => ("Python", "app.py", "`pip install componentize-py`"),
            Lang::C => (
                "C",
                "job.c",
                "clang-19 with wasi-libc, `wit-bindgen` (C) and `wasm-tools`",
            ),
            Lang::Rust => (
                "Rust",
                "src/lib.rs",
                "`rustup target add wasm32-wasip2` (or the Debian route in build.sh)",
            ),
        }
    }
}

const README: &str = include_str!("../../templates/project-README.md");

const GITIGNORE: &str = "build/\nnode_modules/\ntarget/\n__pycache__/\n";

#[derive(Debug, clap::Args)]
pub(super) struct NewArgs {
    /// The job's language.
    #[arg(value_enum)]
    lang: Lang,
    /// The project's name: lowercase letters, digits and `-`; also the
    /// directory it is written to (unless --dir).
    name: String,
    /// Write it here instead of ./NAME (which must not exist or be empty).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(super) struct WitArgs {
    /// Write DIR/job.wit instead of printing it.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Also write DIR/world.wit (world `job-with-wasi`: the job world plus
    /// wasi:cli/environment and wasi:http/outgoing-handler) and the WASI
    /// 0.2.12 packages under DIR/deps/.
    #[arg(long, requires = "out")]
    wasi: bool,
}

/// `wasm-jobs new`.
pub(super) fn new(args: NewArgs) -> anyhow::Result<u8> {
    let name = &args.name;
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "`{name}` is not a project name: up to 64 lowercase letters, digits and `-`, starting with a letter"
        );
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    // Only a folder that is not there, or is there and provably empty.
    match std::fs::read_dir(&dir).map(|mut entries| entries.next().is_none()) {
        Ok(true) => {}
        Ok(false) => bail!("{} already exists and is not empty", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("{} cannot be used: {e}", dir.display()),
    }
    let (language, source, toolchain) = args.lang.about();
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{language}}", language)
            .replace("{{source}}", source)
            .replace("{{toolchain}}", toolchain)
    };
    for (path, text, executable) in args.lang.files() {
        write(&dir.join(path), &fill(text), *executable)?;
    }
    write(&dir.join("README.md"), &fill(README), false)?;
    write(&dir.join(".gitignore"), GITIGNORE, false)?;
    write(&dir.join("wit/job.wit"), JOB_WIT, false)?;
    let shown = dir.display().to_string();
    // Quoted for a shell when it needs to be, so the hint is safe to paste.
    let quoted = if shown
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
    {
        shown.clone()
    } else {
        format!("'{}'", shown.replace('\'', r"'\''"))
    };
    writeln!(
        std::io::stdout(),
        "wrote a {language} job in {shown}; next:\n  cd {quoted} && ./build.sh && wasm-jobs exec build/job.wasm --body world"
    )?;
    Ok(crate::outcome::exit_code::OK)
}

/// `wasm-jobs wit`.
pub(super) fn wit(args: WitArgs) -> anyhow::Result<u8> {
    let Some(dir) = args.out else {
        std::io::stdout().write_all(JOB_WIT.as_bytes())?;
        return Ok(crate::outcome::exit_code::OK);
    };
    if !args.wasi {
        write(&dir.join("job.wit"), JOB_WIT, false)?;
        return Ok(crate::outcome::exit_code::OK);
    }
    // With deps/, the contract is one more dependency of world.wit.
    write(&dir.join("world.wit"), WASI_WORLD, false)?;
    write(&dir.join("deps/job.wit"), JOB_WIT, false)?;
    for (file, text) in WASI_DEPS {
        write(&dir.join("deps").join(file), text, false)?;
    }
    Ok(crate::outcome::exit_code::OK)
}

fn write(path: &Path, text: &str, executable: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    if executable {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
    }
    Ok(())
}
