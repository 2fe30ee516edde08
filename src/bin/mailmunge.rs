//! `mailmunge`: the milter. All logic lives in `mailmunge::milter`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(mailmunge::milter::main_with_args(args));
}
