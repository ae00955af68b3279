//! The project's own iSCSI initiator (tests, CLI, backup client).
