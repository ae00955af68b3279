//! CHAP (RFC 1994) with MD5 for iSCSI login. SKELETON.
