//! Benchmark of the fleet's shared PostgreSQL (issue 14, point 7): how many
//! samples per second one PostgreSQL takes from N hosts.
//!
//! A throwaway cluster is started as the fleet tests start one
//! (`tests/it/pg.rs`: `initdb` into a temp dir as a non-root user when run
//! as root, `pg_ctl` on a free loopback port, `fsync` left on unless
//! `FLEET_FSYNC=off`). Then N hosts, each its own `Shared` (its own pool,
//! as N daemons would have), write batches with `put_samples` (the
//! mirror's one statement per batch) concurrently, one writer per host as
//! the daemon's shipper has, for `FLEET_SECONDS`; samples per second over
//! all hosts, and the mean time of one batch.
//!
//! ```text
//! cargo bench --bench fleet                          # N = 1, 4, 16; 500-sample batches, 10 s each
//! FLEET_HOSTS=1,4 FLEET_BATCH=100 FLEET_SECONDS=5 cargo bench --bench fleet
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rollbackd::config::secret::Secret;
use rollbackd::model::{Color, Sample, SampleStatus};
use rollbackd::store::shared::Shared;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").is_file())
            .collect();
        versions.sort();
        let bin = versions.pop()?;
        let dir = tempfile::Builder::new()
            .prefix("rollbackd-bench-pg-")
            .tempdir()
            .unwrap();
        let run_as = nix::unistd::geteuid().is_root().then(|| {
            let name = ["postgres", "nobody"]
                .into_iter()
                .find(|n| nix::unistd::User::from_name(n).ok().flatten().is_some())
                .expect("a non-root user to run PostgreSQL as");
            let user = nix::unistd::User::from_name(name).unwrap().unwrap();
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
            name.to_owned()
        });
        let mut c = Cluster {
            dir,
            bin,
            port: 0,
            run_as,
        };
        let out = c
            .command("initdb")
            .args(["-D", &c.data(), "-U", "rollbackd", "--auth=trust"])
            .args(["-E", "UTF8", "--locale=C"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fsync = std::env::var("FLEET_FSYNC").unwrap_or_else(|_| "on".into());
        for _ in 0..5 {
            c.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let opts = format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync={fsync} -c max_connections=200",
                c.port,
                c.dir.path().display()
            );
            let started = c
                .command("pg_ctl")
                .args(["-D", &c.data(), "-o", &opts, "-l"])
                .arg(c.dir.path().join("server.log"))
                .args(["-w", "-t", "30", "start"])
                .output()
                .is_ok_and(|o| o.status.success());
            if started {
                return Some(c);
            }
        }
        panic!("PostgreSQL did not start");
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

    fn url(&self) -> String {
        format!("postgres://rollbackd@127.0.0.1:{}/postgres", self.port)
    }

    #[allow(dead_code)]
    fn dir(&self) -> &Path {
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

/// A batch as a daemon's mirror ships it: 10 probes on both colors.
fn batch(n: usize, at_ms: i64) -> Vec<Sample> {
    (0..n)
        .map(|i| Sample {
            at_ms: at_ms + i as i64,
            probe: format!("probe-{}", i % 10),
            color: Some(if i % 2 == 0 {
                Color::Blue
            } else {
                Color::Green
            }),
            deployment: None,
            ok: i % 200 != 0,
            latency_ms: Some(3.0 + (i % 7) as f64),
            status: if i % 200 != 0 {
                SampleStatus::Ok
            } else {
                SampleStatus::Failed
            },
            detail: if i % 200 != 0 {
                String::new()
            } else {
                "HTTP 503".into()
            },
            requests: None,
            errors: None,
        })
        .collect()
}

/// N hosts writing for `seconds`: (samples written, batches, seconds).
async fn run(secret: &Secret, hosts: usize, size: usize, seconds: f64) -> (usize, usize, f64) {
    let mut shareds = Vec::new();
    for h in 0..hosts {
        shareds.push(
            Shared::connect_only(secret, &format!("bench-{hosts}-{h}"), "bench")
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = shareds
        .into_iter()
        .map(|db| {
            tokio::spawn(async move {
                let mut batches = 0;
                while Instant::now() < until {
                    db.put_samples(&batch(size, rollbackd::model::now_ms()))
                        .await
                        .unwrap();
                    batches += 1;
                }
                db.close().await;
                batches
            })
        })
        .collect();
    let mut batches = 0;
    for t in tasks {
        batches += t.await.unwrap();
    }
    (batches * size, batches, started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let Some(pg) = Cluster::start() else {
        eprintln!("skipped: PostgreSQL is not installed (Debian package `postgresql`)");
        return;
    };
    let secret = Secret::resolve(&pg.url()).unwrap();
    // The schema, made once.
    Shared::connect(&secret, "bench", "bench")
        .await
        .unwrap()
        .close()
        .await;
    let hosts: Vec<usize> = std::env::var("FLEET_HOSTS")
        .unwrap_or_else(|_| "1,4,16".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let size: usize = env_or("FLEET_BATCH", 500);
    let seconds: f64 = env_or("FLEET_SECONDS", 10.0);
    println!(
        "one PostgreSQL, {size}-sample batches (put_samples), {seconds} s per row, fsync {}",
        std::env::var("FLEET_FSYNC").unwrap_or_else(|_| "on".into())
    );
    println!(
        "{:>6} {:>14} {:>10} {:>16}",
        "hosts", "samples/s", "batches", "ms per batch"
    );
    for n in hosts {
        let (samples, batches, secs) = run(&secret, n, size, seconds).await;
        let per_batch = secs * 1000.0 * n as f64 / batches.max(1) as f64;
        println!(
            "{n:>6} {:>14.0} {batches:>10} {per_batch:>16.1}",
            samples as f64 / secs
        );
    }
}
