//! Formats and sockets shared by more than one program: the percent codec
//! ([`percent`]), socket specifications and listeners ([`sockspec`]), the
//! control-socket client ([`mxclient`]), the MTA's side of the milter
//! protocol ([`mtaclient`], for mm-try, the tests and the benchmarks), and
//! the multiplexor's side servers: the Sendmail socketmap ([`socketmap`])
//! and the notifier ([`notify`]); the worker-reservation exchange between
//! our milter and multiplexor ([`reservation`]).

pub mod mtaclient;
pub mod mxclient;
pub mod notify;
pub mod percent;
pub mod reservation;
pub mod socketmap;
pub mod sockspec;
