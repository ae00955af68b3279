//! The only socket code: accept loop, connections, sessions, registry.
