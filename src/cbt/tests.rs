//! Unit tests of the tracker's building blocks.
