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

/// The daemon that holds `state_dir`'s lock, as another command sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Holder {
    pub pid: u32,
    /// When it took the lock (the lock file's modification time).
    pub since_ms: i64,
}

/// Who holds `state_dir`'s lock, read without taking it (so a daemon
/// starting at the same moment is never turned away by a `status`): the
/// kernel lists every `flock` in `/proc/locks` by device and inode. `None`
/// when no daemon runs on `state_dir` (or the file is missing).
pub fn holder(state_dir: &Path) -> Option<Holder> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(state_dir.join(FILE_NAME)).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let since_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    locks
        .lines()
        .find_map(|line| flock_holder(line, meta.dev(), meta.ino()))
        .map(|pid| Holder { pid, since_ms })
}

/// The PID in one `/proc/locks` line when it is a `FLOCK` on the file
/// (`MAJOR:MINOR:INODE`, the numbers in hex, hex, decimal).
fn flock_holder(line: &str, dev: u64, ino: u64) -> Option<u32> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; a waiter has "->".
    let at = fields.iter().position(|f| *f == "FLOCK")?;
    if fields.get(at.checked_sub(1)?) == Some(&"->") {
        return None;
    }
    let pid: u32 = fields.get(at + 3)?.parse().ok()?;
    let mut id = fields.get(at + 4)?.split(':');
    let major = u64::from_str_radix(id.next()?, 16).ok()?;
    let minor = u64::from_str_radix(id.next()?, 16).ok()?;
    let inode: u64 = id.next()?.parse().ok()?;
    let (dev_major, dev_minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    (major == dev_major && minor == dev_minor && inode == ino).then_some(pid)
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

    #[test]
    fn the_holder_is_read_without_taking_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(holder(&state), None, "no lock file: nobody holds it");
        let lock = acquire(&state).unwrap();
        let seen = holder(&state).expect("the lock is held by this process");
        assert_eq!(seen.pid, std::process::id());
        assert!(seen.since_ms > 0);
        // Reading it took nothing: the holder still holds, and after it lets
        // go nobody does.
        assert!(matches!(acquire(&state), Err(LockError::Held { .. })));
        drop(lock);
        assert_eq!(holder(&state), None);
    }

    #[test]
    fn proc_locks_lines_are_matched_by_device_and_inode() {
        let dev = nix::sys::stat::makedev(0xfd, 0x01);
        let line = "3: FLOCK  ADVISORY  WRITE 4242 fd:01:123456 0 EOF";
        assert_eq!(flock_holder(line, dev, 123456), Some(4242));
        assert_eq!(flock_holder(line, dev, 123457), None);
        let other_dev = nix::sys::stat::makedev(0x08, 0x01);
        assert_eq!(flock_holder(line, other_dev, 123456), None);
        let waiter = "3: -> FLOCK  ADVISORY  WRITE 77 fd:01:123456 0 EOF";
        assert_eq!(flock_holder(waiter, dev, 123456), None);
        let posix = "1: POSIX  ADVISORY  WRITE 4242 fd:01:123456 0 EOF";
        assert_eq!(flock_holder(posix, dev, 123456), None);
    }
}
