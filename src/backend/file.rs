//! STUB (config branch only): just enough of the file backend for the
//! configuration code and its tests to compile and run. The real
//! implementation comes from the backend branch; take theirs on merge.
use super::Backend;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct FileBackend {
    file: File,
    path: PathBuf,
    size: u64,
}

impl FileBackend {
    pub fn open(path: &Path, size: u64, create: bool, read_only: bool) -> io::Result<FileBackend> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .create(create && !read_only)
            .truncate(false)
            .open(path)?;
        if !read_only && file.metadata()?.len() < size {
            file.set_len(size)?;
        }
        Ok(FileBackend {
            file,
            path: path.to_path_buf(),
            size,
        })
    }
}

impl Backend for FileBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, offset: u64, buf: &[u8], _fua: bool) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn unmap(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }
}
