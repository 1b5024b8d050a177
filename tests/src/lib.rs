//! Cross-process integration and fault tests of collab: harnesses that
//! start real processes on free ports in temporary directories, and the
//! tests that kill them and check that nothing acknowledged was lost.
