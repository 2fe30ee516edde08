//! The `mailmunge` milter: a drop-in for upstream's C milter on indymilter
//! (protocol/milter.md). `run` is the whole program after argument
//! collection.

pub mod commands;
pub mod log;
pub mod mtastream;
pub mod options;
pub mod reply;
pub mod results;
pub mod session;
pub mod spool;
mod startup;

pub use startup::{main_with_args, prcap};
