//! SKELETON
pub struct Sense;
pub enum SenseReason {}
