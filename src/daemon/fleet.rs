//! The probe fleet: one task per (probe, color), or one for a shared probe
//! (and for an access log naming no color in its file), each sending its
//! [`Sample`]s down one channel, stamped with the color's current
//! deployment ([`DeploymentIds`], published by whoever knows them: the
//! daemon's work loop, as the state watcher reads them; `gate` publishes
//! none).
//!
//! [`Fleet`] owns the tasks: it starts them, restarts the probes a reload
//! changed (the others keep their schedule and their run in flight) and
//! stops them all, awaiting each. It decides nothing about samples; when a
//! probe runs is `probe::schedule`'s, how it runs the probe's own file's.
//! The daemon and `gate` both probe through it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{Check, Config, Scope};
use crate::model::{Color, Sample, now_ms};
use crate::probe::schedule::{self, Cadence};
use crate::probe::{Prober, access_log};

/// The latest deployment id of each color: samples are stamped with it.
pub type DeploymentIds = HashMap<Color, i64>;

/// The running probe tasks and what a restart needs to start them again.
pub struct Fleet {
    prober: Prober,
    tx: mpsc::Sender<Sample>,
    deployments: watch::Receiver<DeploymentIds>,
    tasks: Vec<ProbeTask>,
}

struct ProbeTask {
    /// The probe it runs.
    probe: String,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Fleet {
    /// Start every configured probe, sending samples to `tx`.
    pub fn start(
        config: &Arc<Config>,
        prober: &Prober,
        tx: &mpsc::Sender<Sample>,
        deployments: &watch::Receiver<DeploymentIds>,
    ) -> Fleet {
        let mut fleet = Fleet {
            prober: prober.clone(),
            tx: tx.clone(),
            deployments: deployments.clone(),
            tasks: Vec::new(),
        };
        fleet.spawn(config, |_| true);
        fleet
    }

    /// After a reload to `config`: stop the tasks of the probes named in
    /// `restart` (changed, added or removed: `reload::probes_to_restart`),
    /// drop the memory of removed probes, and start those `config` still
    /// has. The other tasks keep running untouched.
    pub async fn restart(&mut self, config: &Arc<Config>, restart: &BTreeSet<String>) {
        let (stopping, kept): (Vec<ProbeTask>, Vec<ProbeTask>) = std::mem::take(&mut self.tasks)
            .into_iter()
            .partition(|t| restart.contains(&t.probe));
        stop_tasks(stopping).await;
        self.prober.forget_removed(config);
        self.tasks = kept;
        self.spawn(config, |name| restart.contains(name));
    }

    /// The probe of each running task, in start order (tests).
    #[cfg(test)]
    pub fn probes(&self) -> Vec<&str> {
        self.tasks.iter().map(|t| t.probe.as_str()).collect()
    }

    /// Stop every task and wait for each.
    pub async fn stop(self) {
        stop_tasks(self.tasks).await;
    }

    /// Spawn the tasks of the probes `wanted` names.
    fn spawn(&mut self, config: &Arc<Config>, wanted: impl Fn(&str) -> bool) {
        // After a failure, confirm up to the streak the health rules need.
        let confirms = config.confirms();
        for (index, probe) in config.probes.iter().enumerate() {
            if !wanted(&probe.name) {
                continue;
            }
            for color in task_colors(probe) {
                let (stop, stop_rx) = watch::channel(false);
                let job = ProbeJob {
                    config: config.clone(),
                    index,
                    color,
                    prober: self.prober.clone(),
                    tx: self.tx.clone(),
                    deployments: self.deployments.clone(),
                    confirms,
                };
                self.tasks.push(ProbeTask {
                    probe: probe.name.clone(),
                    stop,
                    handle: tokio::spawn(job.run(stop_rx)),
                });
            }
        }
    }
}

/// The colors a probe gets a task for (`None`: one task, shared).
fn task_colors(probe: &crate::config::Probe) -> Vec<Option<Color>> {
    match (&probe.check, probe.scope) {
        // One log for both colors (each line names its upstream) is
        // followed once.
        (Check::AccessLog(a), _) if !a.file.contains("{color}") => vec![None],
        (_, Scope::PerColor) => Color::ALL.iter().copied().map(Some).collect(),
        (_, Scope::Shared) => vec![None],
    }
}

async fn stop_tasks(tasks: Vec<ProbeTask>) {
    for t in &tasks {
        let _ = t.stop.send(true);
    }
    for t in tasks {
        if let Err(e) = t.handle.await {
            tracing::error!("probe task panicked: {e}");
        }
    }
}

struct ProbeJob {
    config: Arc<Config>,
    index: usize,
    color: Option<Color>,
    prober: Prober,
    tx: mpsc::Sender<Sample>,
    deployments: watch::Receiver<DeploymentIds>,
    confirms: u32,
}

impl ProbeJob {
    /// Probe on the probe's cadence (see `probe::schedule`), stamping each
    /// outcome with time and the color's deployment. An access log is
    /// followed instead: a sample per request, as its line lands.
    async fn run(self, stop: watch::Receiver<bool>) {
        let probe = &self.config.probes[self.index];
        if let Check::AccessLog(check) = &probe.check {
            let (tx, deployments) = (&self.tx, &self.deployments);
            access_log::follow(
                &probe.name,
                check,
                &self.config.colors,
                self.color,
                probe.interval,
                move |color, outcome| {
                    let deployment = deployments.borrow().get(&color).copied();
                    let sample =
                        outcome.into_sample(now_ms(), &probe.name, Some(color), deployment);
                    async move { tx.send(sample).await.is_ok() }
                },
                stop,
            )
            .await;
            return;
        }
        let cadence = Cadence::for_probe(probe, self.confirms);
        let (config, prober, color) = (&self.config, &self.prober, self.color);
        let (tx, deployments) = (&self.tx, &self.deployments);
        // Resolved once for the task's life: a reload that changes the
        // probe or the color's base_url restarts the task.
        let url = crate::probe::http_url(config, probe, color);
        let url = url.as_ref();
        schedule::drive(
            cadence,
            move || prober.run_at(config, probe, color, url),
            move |outcome| {
                let deployment = color.and_then(|c| deployments.borrow().get(&c).copied());
                let sample = outcome.into_sample(now_ms(), &probe.name, color, deployment);
                async move { tx.send(sample).await.is_ok() }
            },
            stop,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = concat!(
        crate::config::test_config_head!(),
        r#"[[probe]]
name = "a"
kind = "http"
path = "/a"
interval = "1s"
timeout = "500ms"
health = true
[[probe]]
name = "b"
kind = "http"
path = "/b"
interval = "1s"
timeout = "500ms"
[[probe]]
name = "dep"
kind = "http"
url = "http://127.0.0.1:9/version"
interval = "1s"
timeout = "500ms"
[rollback]
command = ["/bin/true"]
"#
    );

    fn ids(fleet: &Fleet) -> Vec<(&str, tokio::task::Id)> {
        fleet
            .tasks
            .iter()
            .map(|t| (t.probe.as_str(), t.handle.id()))
            .collect()
    }

    /// A task per probe and color, one for a shared probe; a restart
    /// replaces the named probes' tasks and leaves the others running.
    #[tokio::test]
    async fn a_restart_replaces_only_the_named_probes_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollbackd.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let config = Arc::new(Config::load(&path).unwrap());
        let (tx, _rx) = mpsc::channel(64);
        let (_deploy_tx, deploy_rx) = watch::channel(DeploymentIds::new());
        let mut fleet = Fleet::start(&config, &Prober::new(), &tx, &deploy_rx);
        assert_eq!(fleet.probes(), ["a", "a", "b", "b", "dep"]);
        let before = ids(&fleet);
        let before: Vec<_> = before.iter().map(|(p, id)| (p.to_string(), *id)).collect();

        fleet
            .restart(&config, &BTreeSet::from(["b".to_owned()]))
            .await;
        let after = ids(&fleet);
        for (probe, id) in &before {
            let still = after.iter().any(|(p, i)| p == probe && i == id);
            assert_eq!(still, probe != "b", "{probe}");
        }
        assert_eq!(after.iter().filter(|(p, _)| *p == "b").count(), 2);
        fleet.stop().await;
    }
}
