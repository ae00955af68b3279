//! SKELETON
pub struct MemoryBackend;
