//! A throwaway PostgreSQL cluster for the fleet tests: `initdb` into a temp
//! dir as a non-root user (PostgreSQL refuses to run as root), `pg_ctl` on
//! a free loopback port, trust authentication for its one role, stopped
//! (immediately) when dropped. The binaries come from Debian's `postgresql`
//! package, under `/usr/lib/postgresql/<version>/bin`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::common;

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// The non-root user the server runs as when the tests run as root.
    run_as: Option<String>,
    /// One cluster at a time: two at once, each with a pair of daemons,
    /// loaded a 2-core machine enough to stretch the 5 s takeover and the
    /// 20 s waits of the fleet tests (seen locally, not only under CI).
    /// Released after the server stopped (fields drop after `Drop::drop`).
    _turn: MutexGuard<'static, ()>,
    /// When psql last ran (see [`PSQL_SPACING`]).
    last_psql: Mutex<Option<Instant>>,
}

/// A psql call is a process and a server backend: the fleet tests' waits,
/// polling it every 50 ms, kept most of a core busy and starved the
/// daemons they waited for. Calls are spaced at least this far apart.
const PSQL_SPACING: Duration = Duration::from_millis(200);

static TURN: Mutex<()> = Mutex::new(());

/// The directory holding `initdb` and `pg_ctl`, newest version first.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

impl Cluster {
    /// A running cluster, or `None` (with the skip printed) when
    /// PostgreSQL is not installed. Panics on a failure to start one.
    pub fn start() -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            // Prints the reason (or panics under ROLLBACKD_TEST_REQUIRE_ALL).
            common::have_tool("/usr/lib/postgresql/*/bin/initdb", "postgresql");
            return None;
        };
        // A test that panicked held it: the lock guards nothing but turns.
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("rollbackd-pg-")
            .tempdir()
            .unwrap();
        let run_as = if nix::unistd::geteuid().is_root() {
            let name = ["postgres", "nobody"]
                .into_iter()
                .find(|n| nix::unistd::User::from_name(n).ok().flatten().is_some())
                .expect("a non-root user to run PostgreSQL as");
            let user = nix::unistd::User::from_name(name).unwrap().unwrap();
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
            Some(name.to_owned())
        } else {
            None
        };
        let mut cluster = Cluster {
            dir,
            bin,
            port: 0,
            run_as,
            _turn: turn,
            last_psql: Mutex::new(None),
        };
        let data = cluster.data();
        let out = cluster
            .command("initdb")
            .args(["-D", &data, "-U", "rollbackd", "--auth=trust", "-E", "UTF8"])
            .args(["--no-sync", "--locale=C"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port: bound and released, then taken by the server. Another
        // process could take it between; retried a few times.
        for _ in 0..5 {
            cluster.port = free_port();
            if cluster.pg_ctl_start() {
                return Some(cluster);
            }
        }
        panic!("PostgreSQL did not start:\n{}", cluster.log());
    }

    /// The URL a daemon is given (through `env:`), to the cluster's own
    /// `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://rollbackd@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn pg_ctl_start(&self) -> bool {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.command("pg_ctl")
            .args(["-D", &self.data(), "-o", &opts, "-l"])
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "30", "start"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Stop the server at once (as a crash or a lost network would look
    /// to its clients).
    pub fn stop(&self) {
        let out = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start the stopped server again, on the same port.
    pub fn restart(&self) {
        assert!(
            self.pg_ctl_start(),
            "PostgreSQL did not restart:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        common::read(&self.dir.path().join("server.log"))
    }

    /// Run one SQL statement with `psql` and return its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }

    /// [`Cluster::psql`], with its error (a table not made yet) returned.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        {
            let mut last = self.last_psql.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(at) = *last {
                // Spacing a poll, not waiting for readiness.
                std::thread::sleep(PSQL_SPACING.saturating_sub(at.elapsed()));
            }
            *last = Some(Instant::now());
        }
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(self.url())
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
