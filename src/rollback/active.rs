//! Where the truth about the active color lives: the `[active] file` when
//! configured (a deploy pipeline's switch writes it), else the last recorded
//! deployment. [`Watch`] wakes the daemon when the file changes (with
//! `notify`), so a pipeline's cutover is recorded at once; the daemon also
//! re-reads it on every tick, which covers filesystems where change events
//! do not arrive. [`read`] only reads (what `status` and `drill` call);
//! [`current`] also records a cutover the file shows, which only the daemon
//! (and a rollback as it starts) does. Nothing here decides about rollbacks.

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

/// How many times [`read_settled`] reads again a file that looked
/// half-written, and how long it waits before each.
const RACE_RETRIES: u32 = 2;
const RACE_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// The most an `[active] file` may hold: a color name and some blanks.
const ACTIVE_FILE_CAP: u64 = 4096;

/// Read the `[active] file`, once.
pub fn read_file(path: &Path) -> Result<Color, ActiveError> {
    // Opened O_NONBLOCK, a regular file only, a few bytes at most: a FIFO
    // or device put at the path is an error at once, never a read that
    // blocks the daemon's one runtime thread.
    let text = crate::hostfile::read_capped(path, ACTIVE_FILE_CAP).map_err(|source| {
        ActiveError::Read {
            path: path.display().to_string(),
            source,
        }
    })?;
    text.trim().parse().map_err(|_| ActiveError::Garbled {
        path: path.display().to_string(),
        found: text.trim().chars().take(40).collect(),
    })
}

/// Read the `[active] file`, reading again (up to [`RACE_RETRIES`] times,
/// [`RACE_PAUSE`] apart) when it is missing, empty or garbled: a switch
/// that writes the file in place (`printf blue > file` truncates, then
/// writes) or replaces it by delete-and-create shows a reader those states
/// for a moment. A file still wrong after the retries is an error.
pub async fn read_settled(path: &Path) -> Result<Color, ActiveError> {
    let mut attempt = 0;
    loop {
        match read_file(path) {
            Ok(color) => return Ok(color),
            Err(e) if attempt >= RACE_RETRIES || !e.may_be_a_race() => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(RACE_PAUSE).await;
            }
        }
    }
}

impl ActiveError {
    /// What a reader racing a writer sees: no file (between delete and
    /// create), or content that is not a color yet (empty, partial).
    fn may_be_a_race(&self) -> bool {
        match self {
            ActiveError::Read { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            ActiveError::Garbled { .. } => true,
            ActiveError::Store(_) => false,
        }
    }
}

/// What the sources say is active, read without writing anything.
#[derive(Clone, Debug, PartialEq)]
pub enum Active {
    /// The color and the deployment serving it.
    Serving(Color, Deployment),
    /// The `[active] file` names this color and no recorded deployment made
    /// it active: a cutover made outside rollbackd that nobody has recorded
    /// yet. The daemon records it ([`current`]); a reader only says so.
    Unrecorded(Color),
}

impl Active {
    pub fn color(&self) -> Color {
        match self {
            Active::Serving(c, _) | Active::Unrecorded(c) => *c,
        }
    }

    /// The deployment serving the color; `None` for an unrecorded cutover.
    pub fn deployment(&self) -> Option<&Deployment> {
        match self {
            Active::Serving(_, d) => Some(d),
            Active::Unrecorded(_) => None,
        }
    }
}

/// Which color is active: the `[active] file` when configured, else the last
/// recorded deployment. A pure read (`status` and `drill` call it on a
/// database they may not write): a cutover the file shows and no deployment
/// records is [`Active::Unrecorded`], never recorded here. `None` when
/// nothing says which color is active yet.
pub async fn read(config: &Config, store: &Store) -> Result<Option<Active>, ActiveError> {
    let latest = store.latest_deployment().await?;
    let Some(file) = &config.active_file else {
        return Ok(latest.map(|d| Active::Serving(d.color, d)));
    };
    let color = read_settled(file).await?;
    match latest {
        Some(d) if d.color == color => Ok(Some(Active::Serving(color, d))),
        // `rollbackd deploy` recorded a cutover the file does not show yet
        // (the pipeline records first, then switches): the file decides, and
        // the color it names still serves its own last deployment.
        Some(d) if modified_ms(file).is_some_and(|m| m <= d.at_ms) => {
            Ok(Some(match store.latest_deployment_of(color).await? {
                Some(serving) => Active::Serving(color, serving),
                None => Active::Unrecorded(color),
            }))
        }
        _ => {
            // A rollback in flight onto this color moved the file itself and
            // records its own deployment: not a pipeline's cutover.
            if let Some(inc) = store.in_flight_incident().await? {
                if inc.to_color == Some(color) {
                    if let Some(target) = store.latest_deployment_of(color).await? {
                        return Ok(Some(Active::Serving(color, target)));
                    }
                }
            }
            Ok(Some(Active::Unrecorded(color)))
        }
    }
}

/// The active color and the deployment that made it active, as [`read`]
/// says, with an unrecorded cutover recorded now (version unknown): the
/// act the daemon's state watcher (and a rollback, as it starts) does, and
/// no reader. `None` when nothing says which color is active yet.
pub async fn current(
    config: &Config,
    store: &Store,
) -> Result<Option<(Color, Deployment)>, ActiveError> {
    match read(config, store).await? {
        None => Ok(None),
        Some(Active::Serving(color, d)) => Ok(Some((color, d))),
        Some(Active::Unrecorded(color)) => {
            // Only the `[active] file` makes an unrecorded cutover.
            let file = config
                .active_file
                .as_deref()
                .unwrap_or(Path::new("[active] file"));
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
            Ok(ev) => wakes(&ev, name.as_deref()),
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

/// Whether `ev` may have changed the file called `name`. The state
/// watcher reads the file on every wake, so counting its own open and read
/// as a change kept it reading the file and the database in a loop, at a
/// full core (seen in the fleet tests).
fn wakes(ev: &notify::Event, name: Option<&std::ffi::OsStr>) -> bool {
    crate::hostfile::may_change(ev) && ev.paths.iter().any(|p| p.file_name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_or_reading_the_file_is_no_change_writing_or_replacing_it_is() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        use notify::{Event, EventKind};
        let name = Some(std::ffi::OsStr::new("active"));
        let on = |kind| Event::new(kind).add_path("/run/app/active".into());
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
        ] {
            assert!(!wakes(&on(kind), name), "{kind:?}");
        }
        for kind in [
            EventKind::Modify(ModifyKind::Any),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Any,
        ] {
            assert!(wakes(&on(kind), name), "{kind:?}");
        }
        let other = Event::new(EventKind::Modify(ModifyKind::Any)).add_path("/run/app/x".into());
        assert!(!wakes(&other, name), "another file");
    }

    /// With a real watch: a write wakes it, and then reading the file
    /// many times wakes nothing (before, each read woke it, and the wake's
    /// own read woke it again, for ever).
    #[tokio::test]
    async fn a_real_watch_wakes_on_a_write_and_not_on_reads() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("active");
        std::fs::write(&file, "blue\n").unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let _watcher = watch_file(&file, tx).unwrap();
        std::fs::write(&file, "green\n").unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the write wakes the watch");
        // The write's later events (truncate, then write) may wake it
        // once more: let them pass, a bounded number of times.
        for _ in 0..10 {
            if tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err()
            {
                break;
            }
        }
        for _ in 0..20 {
            assert_eq!(std::fs::read_to_string(&file).unwrap(), "green\n");
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(500), rx.recv())
                .await
                .is_err(),
            "reading the file woke the watch"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_racing_a_writer_is_retried_until_the_color_lands() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("active-color");
        // The writer truncated the file and has not written yet.
        std::fs::write(&file, "").unwrap();
        let writer = {
            let file = file.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RACE_PAUSE / 2).await;
                std::fs::write(&file, "green\n").unwrap();
            })
        };
        assert!(matches!(read_file(&file), Err(ActiveError::Garbled { .. })));
        assert_eq!(read_settled(&file).await.unwrap(), Color::Green);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_write_and_a_missing_file_are_retried_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("active-color");
        std::fs::write(&file, "gr").unwrap();
        let writer = {
            let file = file.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RACE_PAUSE + RACE_PAUSE / 2).await;
                std::fs::remove_file(&file).unwrap();
                tokio::time::sleep(RACE_PAUSE).await;
                std::fs::write(&file, "blue").unwrap();
            })
        };
        // Garbled at 0, missing at 1 x PAUSE... the second retry (at 2 x
        // PAUSE) still finds no file; the third read is never made.
        let started = tokio::time::Instant::now();
        let err = read_settled(&file).await.unwrap_err();
        assert!(matches!(err, ActiveError::Read { .. }), "{err}");
        assert_eq!(started.elapsed(), RACE_PAUSE * RACE_RETRIES);
        writer.await.unwrap();
        assert_eq!(read_settled(&file).await.unwrap(), Color::Blue);
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_stays_wrong_is_an_error_after_the_retries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("active-color");
        std::fs::write(&file, "purple\n").unwrap();
        let started = tokio::time::Instant::now();
        let err = read_settled(&file).await.unwrap_err();
        assert!(err.to_string().contains("says \"purple\""), "{err}");
        assert_eq!(started.elapsed(), RACE_PAUSE * RACE_RETRIES);
        // A permission problem is not a race: no retry.
        let missing_dir = dir.path().join("no-such-dir").join("file");
        let started = tokio::time::Instant::now();
        std::fs::write(dir.path().join("no-such-dir"), "a file, not a folder").unwrap();
        assert!(read_settled(&missing_dir).await.is_err());
        assert_eq!(started.elapsed(), std::time::Duration::ZERO);
    }

    /// Issue 12: a read that wrote. `read` says a cutover the file shows is
    /// unrecorded and writes no row; `current` (the daemon's) records it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_never_records_a_cutover_and_current_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollbackd.toml");
        std::fs::write(
            &path,
            format!(
                "{}[active]\nfile = \"active-color\"\n",
                crate::config::TEST_CONFIG
            ),
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let store = Store::open_dir(&config.daemon.state_dir).await.unwrap();
        // Blue was deployed an hour ago; the file, written now, says green.
        let blue = store
            .record_deployment(Color::Blue, "v1", "cli", now_ms() - 3_600_000)
            .await
            .unwrap();
        std::fs::write(dir.path().join("active-color"), "green\n").unwrap();

        for _ in 0..2 {
            let active = read(&config, &store).await.unwrap();
            assert_eq!(active, Some(Active::Unrecorded(Color::Green)));
            assert_eq!(active.unwrap().deployment(), None);
        }
        assert_eq!(store.deployments().await.unwrap(), vec![blue.clone()]);

        let (color, recorded) = current(&config, &store).await.unwrap().unwrap();
        assert_eq!(
            (color, recorded.source.as_str()),
            (Color::Green, "active-file")
        );
        // Recorded once: the next read finds it serving.
        assert_eq!(
            read(&config, &store).await.unwrap(),
            Some(Active::Serving(Color::Green, recorded.clone()))
        );
        assert_eq!(store.deployments().await.unwrap().len(), 2);
    }

    #[test]
    fn a_fifo_or_device_at_the_path_is_an_error_at_once_naming_its_type() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("active-color");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let started = std::time::Instant::now();
        let err = read_file(&fifo).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
        let err = read_file(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(err.contains("character device"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
