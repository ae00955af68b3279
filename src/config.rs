//! Configuration (TOML). SKELETON.
