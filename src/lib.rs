//! mailmunge-rs: a drop-in reimplementation of the Mailmunge milter framework.
//!
//! One module owns each wire format; see `protocol/README.md` for the map.
pub mod cformat;
pub mod config;
pub mod ctrl;
pub mod milter;
pub mod mux;
pub mod sys;
pub mod tryout;
pub mod wire;

/// The upstream version we are compatible with; reported by `version`, `-v` and `prcap`.
pub const VERSION: &str = "3.09";
