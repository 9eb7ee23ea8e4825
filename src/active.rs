//! Where the truth about the active color lives: the `[active] file` when
//! configured (a deploy pipeline's switch writes it), else the last recorded
//! deployment. [`Watch`] wakes the daemon when the file changes (with
//! `notify`), so a pipeline's cutover is recorded at once; the daemon also
//! re-reads it on every tick, which covers filesystems where change events
//! do not arrive. This file reads the file and records cutovers; it does
//! not decide anything about rollbacks.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use notify::Watcher as _;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::model::{Color, Millis, now_ms};
use crate::store::{Deployment, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ActiveError {
    #[error("cannot read the active-color file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the active-color file {path} says {found:?}: expected \"blue\" or \"green\"")]
    Garbled { path: String, found: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Read the `[active] file`.
pub fn read_file(path: &Path) -> Result<Color, ActiveError> {
    let text = std::fs::read_to_string(path).map_err(|source| ActiveError::Read {
        path: path.display().to_string(),
        source,
    })?;
    text.trim().parse().map_err(|_| ActiveError::Garbled {
        path: path.display().to_string(),
        found: text.trim().chars().take(40).collect(),
    })
}

/// The active color and the deployment that made it active. With an
/// `[active] file` whose color differs from the last recorded deployment, a
/// cutover happened outside rollbackd: it is recorded now (version unknown).
/// `None` when nothing says which color is active yet.
pub async fn current(
    config: &Config,
    store: &Store,
) -> Result<Option<(Color, Deployment)>, ActiveError> {
    let latest = store.latest_deployment().await?;
    let Some(file) = &config.active_file else {
        return Ok(latest.map(|d| (d.color, d)));
    };
    let color = read_file(file)?;
    match latest {
        Some(d) if d.color == color => Ok(Some((color, d))),
        // `rollbackd deploy` recorded a cutover the file does not show yet
        // (the pipeline records first, then switches): the file decides, and
        // the color it names still serves its own last deployment.
        Some(d) if modified_ms(file).is_some_and(|m| m <= d.at_ms) => {
            match store.latest_deployment_of(color).await? {
                Some(serving) => Ok(Some((color, serving))),
                None => Ok(Some((color, record_cutover(store, color, file).await?))),
            }
        }
        _ => {
            // A rollback in flight onto this color moved the file itself and
            // records its own deployment: not a pipeline's cutover.
            if let Some(inc) = store.in_flight_incident().await? {
                if inc.to_color == Some(color) {
                    if let Some(target) = store.latest_deployment_of(color).await? {
                        return Ok(Some((color, target)));
                    }
                }
            }
            Ok(Some((color, record_cutover(store, color, file).await?)))
        }
    }
}

async fn record_cutover(
    store: &Store,
    color: Color,
    file: &Path,
) -> Result<Deployment, StoreError> {
    tracing::info!(
        rollbackd.color = color.as_str(),
        file = %file.display(),
        "active-color file names a new color: recording the cutover"
    );
    store
        .record_deployment(color, "unknown", "active-file", now_ms())
        .await
}

fn modified_ms(path: &Path) -> Option<Millis> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as Millis)
}

/// Wakes when the `[active] file` may have changed. It watches the file's
/// folder, since pipelines often replace the file by a rename.
pub struct Watch {
    // Dropping the watcher stops the events; kept for its lifetime.
    _watcher: Option<notify::RecommendedWatcher>,
    rx: mpsc::Receiver<()>,
}

impl Watch {
    /// A watch on the configured file; without one (or when the folder
    /// cannot be watched, logged) it never wakes and polling remains.
    pub fn new(config: &Config) -> Watch {
        let (tx, rx) = mpsc::channel(1);
        let watcher = config
            .active_file
            .as_ref()
            .and_then(|file| match watch_file(file, tx) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        file = %file.display(),
                        "cannot watch the active-color file ({e}); it is re-read every tick instead"
                    );
                    None
                }
            });
        Watch {
            _watcher: watcher,
            rx,
        }
    }

    /// Resolves when the file changed since the last call.
    pub async fn changed(&mut self) {
        if self._watcher.is_none() || self.rx.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

fn watch_file(file: &Path, tx: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let name = file.file_name().map(|n| n.to_owned());
    let dir: PathBuf = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match res {
            Ok(ev) => ev.paths.iter().any(|p| p.file_name() == name.as_deref()),
            Err(_) => true,
        };
        if relevant {
            // Full means a wake-up is already pending: changes coalesce.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
