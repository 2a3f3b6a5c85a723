//! `mmap-trace completions SHELL` and `mmap-trace man`: generated from the clap
//! definitions (cli.rs), so they never drift from the parser.

use std::{io::Write as _, path::Path};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::cli::Cli;

const NAME: &str = "mmap-trace";

pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), NAME, &mut script);
    if shell == clap_complete::Shell::Bash {
        script = fix_bash_states(&script);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completion script")
}

/// clap_complete 4.6's bash script spells a subcommand's state one way in its dispatch
/// loop (`mmap__trace__subcmd__trace`) and another in the case arms
/// (`mmap__subcmd__trace__subcmd__trace`) when the binary's name has a hyphen, so no
/// subcommand's flags ever complete (clap-rs/clap#6421, open). Spell the arms like the
/// loop; tests/tests/cli_docs.rs completes `trace --cg` in a real bash.
fn fix_bash_states(script: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(script)
        .replace("mmap__subcmd__trace", "mmap__trace")
        .into_bytes()
}

/// The top page to standard output, or every page (`mmap-trace.1`,
/// `mmap-trace-trace.1`, …) into `dir`.
pub fn man(dir: Option<&Path>) -> Result<()> {
    let cmd = Cli::command();
    match dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("writing the man page")?;
            out.flush().context("writing the man page")
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            eprintln!("mmap-trace: wrote the man pages into {}", dir.display());
            Ok(())
        }
    }
}
