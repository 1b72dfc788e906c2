//! `vcodr`: parses the command line and runs it (see `vcodr --help`).

fn main() {
    std::process::exit(vcodr_server::cli::main());
}
