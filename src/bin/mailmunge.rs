//! `mailmunge`: the milter. All logic lives in `mailmunge::milter`.

fn main() {
    std::process::exit(mailmunge::milter::main_with_args(
        std::env::args_os().collect(),
    ));
}
