//! STUB (config branch only): holds the size so the configuration code
//! compiles. The real implementation comes from the backend branch; take
//! theirs on merge.
use super::Backend;
use std::io;

pub struct MemoryBackend {
    size: u64,
}

impl MemoryBackend {
    pub fn new(size: u64) -> MemoryBackend {
        MemoryBackend { size }
    }
}

impl Backend for MemoryBackend {
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn write_at(&self, _offset: u64, _buf: &[u8], _fua: bool) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
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
        "memory".to_string()
    }
}
