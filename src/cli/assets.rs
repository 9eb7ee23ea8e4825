//! `rollbackd generate-assets --out DIR`: the man page and shell completions,
//! generated from the same clap definition the binary parses with, so they
//! never drift. Packaging (`cargo deb`) installs what this writes.
//!
//! One man page, `rollbackd(1)`, holds every command (clap_mangen alone
//! would point at a page per subcommand, and none is shipped), then FILES,
//! ENVIRONMENT, EXIT STATUS, EXAMPLES and SEE ALSO. Hidden commands are in
//! neither the page nor the completions.

use std::io::Write as _;
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
    let mut written = vec![write("rollbackd.1", man_page()?)?];
    for (shell, name) in [
        (Shell::Bash, "rollbackd.bash"),
        (Shell::Zsh, "_rollbackd"),
        (Shell::Fish, "rollbackd.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut visible(Cli::command()), "rollbackd", &mut buf);
        written.push(write(name, buf)?);
    }
    for p in &written {
        println!("{}", p.display());
    }
    Ok(())
}

/// `rollbackd` without its hidden subcommands (clap_complete offers them
/// otherwise): rebuilt from its parts, as clap cannot remove one. Only the
/// top level hides any (a test holds that).
pub(crate) fn visible(cmd: clap::Command) -> clap::Command {
    let mut out = clap::Command::new("rollbackd")
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned())
        .subcommand_required(cmd.is_subcommand_required_set());
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    if let Some(about) = cmd.get_long_about() {
        out = out.long_about(about.clone());
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(sub.clone());
    }
    out
}

/// Escape text for roff: backslashes, dashes, and a leading `.` or `'`.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// One argument as the page shows it: `--for DURATION`, `ID`.
fn arg_usage(arg: &clap::Arg) -> String {
    let value = || {
        arg.get_value_names()
            .and_then(|v| v.first())
            .map(|v| v.to_string())
            .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
    };
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    match (arg.get_long(), arg.get_short()) {
        (Some(long), _) if takes_value => {
            format!("\\fB\\-\\-{}\\fR \\fI{}\\fR", roff(long), roff(&value()))
        }
        (Some(long), _) => format!("\\fB\\-\\-{}\\fR", roff(long)),
        (None, Some(short)) => format!("\\fB\\-{short}\\fR"),
        (None, None) => format!("\\fI{}\\fR", roff(&value())),
    }
}

/// `.SS rollbackd NAME ...` for a command and each of its subcommands.
fn command_section(out: &mut Vec<u8>, path: &str, cmd: &clap::Command) -> std::io::Result<()> {
    let args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| {
            !a.is_hide_set()
                && !a.is_global_set()
                && !["help", "version"].contains(&a.get_id().as_str())
        })
        .collect();
    let usage: Vec<String> = args
        .iter()
        .map(|a| {
            if a.is_required_set() {
                arg_usage(a)
            } else {
                format!("[{}]", arg_usage(a))
            }
        })
        .collect();
    writeln!(out, ".SS \"{}\"", roff(path))?;
    writeln!(out, "\\fB{}\\fR {}", roff(path), usage.join(" "))?;
    writeln!(out, ".br")?;
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        writeln!(out, "{}", roff(&about.to_string()))?;
    }
    for arg in &args {
        writeln!(out, ".TP")?;
        writeln!(out, "{}", arg_usage(arg))?;
        let mut help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_owned())
            .collect();
        if !values.is_empty() && arg.get_num_args().is_some_and(|n| n.takes_values()) {
            help.push_str(&format!(" [one of: {}]", values.join(", ")));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() && arg.get_num_args().is_some_and(|n| n.takes_values()) {
            help.push_str(&format!(" [default: {}]", defaults.join(",")));
        }
        writeln!(out, "{}", roff(&help))?;
    }
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        command_section(out, &format!("{path} {}", sub.get_name()), sub)?;
    }
    Ok(())
}

const FILES: &[(&str, &str)] = &[
    (
        "/etc/rollbackd/rollbackd.toml",
        "The configuration (TOML); every key is commented in the shipped file. Another with --config or ROLLBACKD_CONFIG.",
    ),
    (
        "/var/lib/rollbackd/rollbackd.db",
        "The SQLite database under [daemon] state_dir: samples, verdicts, deployments, incidents. Commands that only read never create it.",
    ),
    (
        "/var/lib/rollbackd/rollbackd.lock",
        "Held by the running daemon: one daemon per state directory; status reads who holds it.",
    ),
    (
        "/lib/systemd/system/rollbackd.service",
        "The systemd unit (Type=notify, watchdog, User=rollbackd).",
    ),
    (
        "/usr/share/doc/rollbackd/",
        "The runbook, rollback procedures, journalctl recipes, installation notes.",
    ),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "ROLLBACKD_CONFIG",
        "The configuration file when --config is not given.",
    ),
    (
        "NO_COLOR",
        "When set (to anything), no colour in any output; none either when the output is not a terminal.",
    ),
    (
        "RUST_LOG",
        "The log filter, e.g. rollbackd=debug (default: info).",
    ),
    (
        "JOURNAL_STREAM",
        "Set by systemd: with --log-format auto, log natively to the journal when it names stderr.",
    ),
    (
        "NOTIFY_SOCKET, WATCHDOG_USEC",
        "Set by systemd for Type=notify and its watchdog.",
    ),
    (
        "GITHUB_STEP_SUMMARY",
        "gate writes its Markdown summary there when --summary is not given.",
    ),
    (
        "ROLLBACKD_FROM, ROLLBACKD_TO, ROLLBACKD_REASON, ROLLBACKD_SEVERITY, ROLLBACKD_INCIDENT, ROLLBACKD_VERSION",
        "Given to the [rollback] commands.",
    ),
];

const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    (
        "1",
        "The thing checked failed: a gate, a refused rollback, check --strict with a warning, a drill whose expectation did not hold.",
    ),
    (
        "2",
        "Usage: a bad argument, or one that names nothing (an unknown incident, probe or deployment).",
    ),
    (
        "70",
        "Any other runtime error, with a one-line cause on stderr.",
    ),
    (
        "78",
        "Bad configuration (EX_CONFIG): the error names the file, line and key.",
    ),
];

const EXAMPLES: &[(&str, &str)] = &[
    (
        "Validate the configuration, its commands checked for the daemon's user:",
        "sudo rollbackd check \\-\\-user rollbackd",
    ),
    ("What is in force now:", "rollbackd status"),
    (
        "In a deploy pipeline: judge the standby for two minutes, then record the cutover:",
        "rollbackd gate \\-\\-color green \\-\\-for 2m && rollbackd deploy \\-\\-color green \\-\\-version $GIT_SHA",
    ),
    (
        "Hold automatic rollbacks during maintenance:",
        "rollbackd pause \\-\\-for 1h \\-\\-reason \"database migration\"",
    ),
    (
        "Roll back by hand through the guarded path:",
        "rollbackd rollback \\-\\-reason \"checkout errors after v42\"",
    ),
    (
        "What the rules would have done over the last week:",
        "rollbackd replay \\-\\-since 7d",
    ),
    ("See it work, with nothing to configure:", "rollbackd demo"),
];

/// The whole `rollbackd(1)` page.
pub(crate) fn man_page() -> std::io::Result<Vec<u8>> {
    let mut cmd = visible(Cli::command());
    // Built: each argument knows whether it takes a value.
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        command_section(&mut out, &format!("rollbackd {}", sub.get_name()), sub)?;
    }
    let list = |out: &mut Vec<u8>, title: &str, items: &[(&str, &str)], bold: bool| {
        writeln!(out, ".SH {title}")?;
        for (term, text) in items {
            writeln!(out, ".TP")?;
            if bold {
                writeln!(out, "\\fB{}\\fR", roff(term))?;
            } else {
                writeln!(out, "\\fI{}\\fR", roff(term))?;
            }
            writeln!(out, "{}", roff(text))?;
        }
        std::io::Result::Ok(())
    };
    list(&mut out, "FILES", FILES, false)?;
    list(&mut out, "ENVIRONMENT", ENVIRONMENT, true)?;
    list(&mut out, "EXIT STATUS", EXIT_STATUS, true)?;
    writeln!(out, ".SH EXAMPLES")?;
    for (what, command) in EXAMPLES {
        writeln!(
            out,
            ".PP\n{}\n.PP\n.RS 4\n.nf\n{command}\n.fi\n.RE",
            roff(what)
        )?;
    }
    writeln!(out, ".SH \"SEE ALSO\"")?;
    writeln!(
        out,
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBsystemd.service\\fR(5); the guides in \\fI/usr/share/doc/rollbackd/\\fR."
    )?;
    man.render_version_section(&mut out)?;
    Ok(out)
}
