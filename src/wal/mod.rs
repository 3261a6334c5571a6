//! Pure SQLite WAL formats: no I/O beyond what a caller hands in, no SQLite calls.
pub mod frames;
