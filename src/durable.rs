//! Durable file replacement: write a temporary file beside the target,
//! fsync it, rename it over the target, fsync the directory. After a
//! successful return the new content survives a crash; a crash before
//! leaves the old file whole. Readers never see half a file.
//!
//! Every small state file (LUN identity, persistent reservations, CBT
//! metadata and snapshots, the reload status, backup repository files)
//! is written through here. Files written in a stream over a long time
//! (backup packs) keep their own open handle and use [`sync_dir`].

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The temporary file [`replace`] writes first: `<path>.tmp`, in the same
/// directory so the rename cannot cross filesystems.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Replace `path` with `bytes` durably.
pub fn replace_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, |w| w.write_all(bytes))
}

/// Replace `path` with what `write` produces, durably (through
/// [`tmp_path`]).
pub fn replace(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    replace_via(&tmp_path(path), path, write)
}

/// Replace `dest` through the temporary file `tmp` (which must be on the
/// same filesystem). On failure `tmp` is removed and `dest` is untouched.
pub fn replace_via(
    tmp: &Path,
    dest: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    if let Err(e) = write_synced(tmp, write).and_then(|()| fs::rename(tmp, dest)) {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    // The rename is durable only once the directory itself is synced.
    sync_parent(dest)
}

fn write_synced(
    tmp: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut w = BufWriter::new(File::create(tmp)?);
    write(&mut w)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Make a create, rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// [`sync_dir`] for the directory holding `path` (`.` for a bare name).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => sync_dir(d),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        fs::write(&p, b"old content, longer than the new").unwrap();
        replace_bytes(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert!(!tmp_path(&p).exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn creates_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fresh");
        replace(&p, |w| w.write_all(b"a").and_then(|()| w.write_all(b"b"))).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"ab");
    }

    #[test]
    fn failed_write_keeps_the_old_file_and_removes_the_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        fs::write(&p, b"old").unwrap();
        let err = replace(&p, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert!(!tmp_path(&p).exists());
    }

    #[test]
    fn failed_rename_removes_the_temp() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory cannot be replaced by a file.
        let p = dir.path().join("occupied");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("x"), b"x").unwrap();
        assert!(replace_bytes(&p, b"new").is_err());
        assert!(!tmp_path(&p).exists());
        assert!(p.join("x").exists());
    }

    #[test]
    fn via_a_temp_elsewhere_in_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let tmp = dir.path().join("tmp").join("config");
        let dest = dir.path().join("config");
        replace_via(&tmp, &dest, |w| w.write_all(b"{}")).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"{}");
        assert!(!tmp.exists());
    }
}
