//! Where a view keeps old data: one anonymous sparse file per view.
//!
//! Why anonymous (`O_TMPFILE`, or created and unlinked at once): the data is
//! worth nothing after the view ends or the target stops, so the kernel
//! frees it when the last descriptor closes — also after kill -9 or a power
//! loss, when no code of ours runs. Why sparse and indexed by extent
//! (extent `x` at byte `x * extent_bytes`): no allocation map to keep, a
//! kept extent that held only zeros costs nothing (never written, reads
//! back as a hole), and the space used is exactly what was written.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

pub struct ViewStore {
    file: File,
}

impl ViewStore {
    /// A new empty store in `dir` (same filesystem as the LUN's CBT state
    /// for persistent LUNs; the temporary directory otherwise).
    pub fn anonymous(dir: &Path) -> io::Result<ViewStore> {
        let tmp = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir);
        let file = match tmp {
            Ok(f) => f,
            // Filesystems without O_TMPFILE: a unique name, unlinked at once.
            Err(_) => {
                let path = dir.join(format!(".view-{:016x}.tmp", rand::random::<u64>()));
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                std::fs::remove_file(&path)?;
                f
            }
        };
        Ok(ViewStore { file })
    }

    pub fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Fill `buf` from `offset`; bytes past the end of the file are holes
    /// (a kept zero extent near the end was never written) and read as 0.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Give the space back (a lost view keeps nothing).
    pub fn discard(&self) {
        if let Err(e) = self.file.set_len(0) {
            tracing::warn!(error = %e, "cannot free a lost view's kept data");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_tail_read_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let s = ViewStore::anonymous(dir.path()).unwrap();
        s.write_at(4096, &[7u8; 10]).unwrap();
        let mut buf = [1u8; 8192];
        s.read_at(0, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..4106].iter().all(|&b| b == 7));
        assert!(buf[4106..].iter().all(|&b| b == 0));
        // Anonymous: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        s.discard();
        s.read_at(4096, &mut buf[..10]).unwrap();
        assert!(buf[..10].iter().all(|&b| b == 0));
    }
}
