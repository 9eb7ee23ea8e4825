//! Where the truth about the active color lives: the `[active] file` when
//! configured (a deploy pipeline's switch writes it), else the last recorded
//! deployment. Reading the file is the only IO here.

use std::path::Path;

use crate::config::Config;
use crate::model::{Color, now_ms};
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
        _ => {
            tracing::info!(color = color.as_str(), file = %file.display(), "active-color file names a new color: recording the cutover");
            let d = store
                .record_deployment(color, "unknown", "active-file", now_ms())
                .await?;
            Ok(Some((color, d)))
        }
    }
}
