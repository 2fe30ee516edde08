//! `mailmunge-multiplexor`: manages the pool of filter workers. All the work
//! is in the library (`mailmunge::mux`); options use upstream's letters.
fn main() {
    std::process::exit(mailmunge::mux::run(std::env::args_os()));
}
