//! SKELETON
pub struct FileBackend;
