//! SendTargets responses for discovery sessions. SKELETON.
