//! openraft glue: the log store (fsync'd segments), the applied-state record, the state machine
//! (the SQLite database), and the network seen by openraft. Nothing outside `raft/` and `node.rs`
//! names an openraft type.
pub mod applied;
pub mod election;
pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod state_machine;
pub mod types;
