//! One daemon per `state_dir` (SPEC section 5): `rollbackd run` holds an
//! advisory `flock` on `state_dir/rollbackd.lock` for its whole life. The
//! kernel releases it when the process ends, however it ends (kill -9
//! included), so a stale lock never keeps a restarted daemon out. The file
//! holds the holder's PID, so a second `run` can say who is already there.
//!
//! Only `run` takes the lock: the other commands meet the daemon through the
//! database and work whether or not it runs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside `state_dir`.
pub const FILE_NAME: &str = "rollbackd.lock";

/// Held while it lives; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another rollbackd (pid {pid}) is already running on state_dir {}; one daemon per state directory",
        dir.display()
    )]
    Held { pid: String, dir: PathBuf },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Take the state directory's lock (creating the directory and the file as
/// needed) and write this process's PID into it; fail at once, naming the
/// holder's PID, when another process holds it.
pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
    let path = state_dir.join(FILE_NAME);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            // Ours now: replace whatever an earlier holder left.
            lock.set_len(0).map_err(io)?;
            lock.rewind().map_err(io)?;
            writeln!(lock, "{}", std::process::id()).map_err(io)?;
            Ok(StateLock { _lock: lock })
        }
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = match pid.trim() {
                "" => "unknown".to_owned(),
                p => p.to_owned(),
            };
            Err(LockError::Held {
                pid,
                dir: state_dir.to_path_buf(),
            })
        }
        Err((_, errno)) => Err(io(std::io::Error::from(errno))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = acquire(&state).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(
            std::fs::read_to_string(state.join(FILE_NAME))
                .unwrap()
                .trim(),
            pid
        );
        // flock locks an open file: a second open in the same process is
        // refused just like another process.
        match acquire(&state) {
            Err(LockError::Held { pid: held, .. }) => assert_eq!(held, pid),
            other => panic!("{other:?}"),
        }
        drop(first);
        let again = acquire(&state).unwrap();
        drop(again);
    }
}
