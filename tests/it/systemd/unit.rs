//! The unit file: its runtime contract, `systemd-analyze verify` and
//! `security`, and the sysusers/tmpfiles that make the user and state dir.

use super::*;

// ---------------------------------------------------------------------------
// 1. The unit file.

/// The unit with ExecStart pointed at the built binary (verify checks that
/// it exists), in a temp dir.
pub(super) fn unit_copy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(UNIT)
        .unwrap()
        .replace("/usr/bin/rollbackd", common::BIN);
    let path = dir.join("rollbackd.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
pub(super) fn unit_file_has_the_runtime_contract_and_verifies_clean() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=rollbackd",
        "ConfigurationDirectory=rollbackd",
        "User=rollbackd",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            text.lines().any(|l| l.trim() == line),
            "{line} missing from the unit"
        );
    }
    assert!(text.lines().any(|l| l.starts_with("WatchdogSec=")));

    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd) is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );

    // The privileged switch unit too, as an instance with a real command.
    let switch = std::fs::read_to_string(SWITCH_UNIT)
        .unwrap()
        .replace("/usr/local/bin/switch-color", "/bin/true");
    let instance = dir.path().join("rollbackd-switch@green.service");
    std::fs::write(&instance, switch).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&instance)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify (switch unit): {}\n{stderr}",
        out.status
    );
}

#[test]
pub(super) fn unit_file_exposure_is_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd) is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for rollbackd.service:"))
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure in:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let level: f64 = line
        .rsplit(':')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{stdout}");
    // systemd's own threshold check agrees (the scale is tenths).
    let status = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&unit)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
pub(super) fn sysusers_and_tmpfiles_make_the_user_and_the_state_dir() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(format!("{dir}/rollbackd.sysusers"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("rollbackd:"))
        .unwrap_or_else(|| panic!("no rollbackd user in {passwd}"));
    let fields: Vec<&str> = entry.split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system user: {entry}");
    assert_eq!(fields[5], "/var/lib/rollbackd");
    assert!(fields[6].ends_with("nologin"), "{entry}");

    let out = Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(format!("{dir}/rollbackd.tmpfiles"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(root.path().join("var/lib/rollbackd")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.uid(), uid);
    assert_eq!(meta.permissions().mode() & 0o777, 0o750);
}
