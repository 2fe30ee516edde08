//! mailmunge-rs: a drop-in reimplementation of the Mailmunge milter framework.
//!
//! One module owns each wire format; see `protocol/README.md` for the map.
pub mod blocking;
pub mod cformat;
pub mod ctrl;
pub mod daemon;
pub mod diagnose;
pub mod envfile;
pub mod logging;
pub mod milter;
pub mod mux;
pub mod mxclient;
pub mod notify;
pub mod percent;
pub mod sdnotify;
pub mod socketmap;
pub mod sockspec;
pub mod startargs;
pub mod tryout;

/// The upstream version we are compatible with; reported by `version`, `-v` and `prcap`.
pub const VERSION: &str = "3.09";
