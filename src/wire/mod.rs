//! Formats and sockets shared by more than one program: the percent codec
//! ([`percent`]), socket specifications and listeners ([`sockspec`]), the
//! control-socket client ([`mxclient`]), and the multiplexor's side
//! servers: the Sendmail socketmap ([`socketmap`]) and the notifier
//! ([`notify`]).

pub mod mxclient;
pub mod notify;
pub mod percent;
pub mod socketmap;
pub mod sockspec;
