//! Opening a file the host may have made hostile: a FIFO (an open that
//! blocks until a writer comes, reads that never end), a device (`/dev/zero`
//! reads for ever), a socket, a directory. Every open here is `O_NONBLOCK`
//! and refuses anything but a regular file, naming what it found; reads are
//! bounded. Used by the log followers and the config loader; and
//! [`may_change`], what the file watches wake on.
//!
//! It owns no state and knows nothing of probes or configuration.

use std::fs::{File, FileType};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a non-regular file is, in words.
pub fn kind(ft: &FileType) -> &'static str {
    if ft.is_file() {
        "a regular file"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Why a file was refused: it is not a regular file. Carried inside an
/// `io::Error` so callers can tell it from a plain read error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is {kind}, not a regular file")]
pub struct NotRegular {
    pub kind: &'static str,
}

/// Whether `e` is a refusal of a non-regular file (and which kind).
pub fn not_regular(e: &std::io::Error) -> Option<&'static str> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<NotRegular>())
        .map(|n| n.kind)
}

/// Open `path` for reading without ever blocking in the open (`O_NONBLOCK`:
/// a FIFO with no writer opens at once) and keep it only if it is a
/// regular file (checked on the open descriptor, so a swap between a check
/// and the open changes nothing).
pub fn open_regular(path: &Path) -> std::io::Result<(File, std::fs::Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(NotRegular {
            kind: kind(&meta.file_type()),
        }));
    }
    Ok((file, meta))
}

/// Read a whole regular file of at most `cap` bytes as text.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    let (file, meta) = open_regular(path)?;
    let too_big = || {
        std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("is larger than the {} KiB limit", cap / 1024),
        )
    };
    if meta.len() > cap {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // One byte over the cap tells a file that grew since the fstat.
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_big());
    }
    String::from_utf8(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()))
}

/// Whether a file watch's event may have changed the file's content. Opening
/// and reading it do not (inotify reports them too, our own reads
/// included): a watch whose handler reads the file on any event wakes
/// itself for ever.
pub fn may_change(event: &notify::Event) -> bool {
    !matches!(event.kind, notify::EventKind::Access(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_naming_its_type() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let started = std::time::Instant::now();
        let e = open_regular(&fifo).unwrap_err();
        assert_eq!(not_regular(&e), Some("a FIFO"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(
            read_capped(&fifo, 1024)
                .unwrap_err()
                .to_string()
                .contains("FIFO")
        );
    }

    #[test]
    fn dev_zero_and_a_symlink_to_it_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("zero.log");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        for p in [Path::new("/dev/zero"), link.as_path()] {
            let e = read_capped(p, 1024).unwrap_err();
            assert_eq!(not_regular(&e), Some("a character device"), "{e}");
        }
        let e = open_regular(dir.path()).unwrap_err();
        assert_eq!(not_regular(&e), Some("a directory"), "{e}");
    }

    #[test]
    fn a_file_over_the_cap_is_refused_and_one_under_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "x".repeat(2048)).unwrap();
        let e = read_capped(&p, 1024).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        assert_eq!(not_regular(&e), None);
        assert_eq!(read_capped(&p, 4096).unwrap().len(), 2048);
    }
}
