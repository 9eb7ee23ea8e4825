//! `rollbackd generate-assets --out DIR`: the man page and shell completions,
//! generated from the same clap definition the binary parses with, so they
//! never drift. Packaging (`cargo deb`) installs what this writes.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

#[derive(Args, Debug)]
pub struct AssetsArgs {
    /// Folder to write rollbackd.1 and the completions into
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(a: AssetsArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let write = |name: &str, bytes: Vec<u8>| -> anyhow::Result<PathBuf> {
        let path = a.out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    };
    let mut man = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut man)?;
    let mut written = vec![write("rollbackd.1", man)?];
    for (shell, name) in [
        (Shell::Bash, "rollbackd.bash"),
        (Shell::Zsh, "_rollbackd"),
        (Shell::Fish, "rollbackd.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "rollbackd", &mut buf);
        written.push(write(name, buf)?);
    }
    for p in &written {
        println!("{}", p.display());
    }
    Ok(())
}
