//! mm-mx-ctrl: the operator's control tool for mailmunge-multiplexor.
//! Everything lives in `mailmunge::ctrl`.

fn main() {
    std::process::exit(mailmunge::ctrl::cli::main(std::env::args_os().collect()));
}
