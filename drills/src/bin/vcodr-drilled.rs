//! `vcodr-drilled`: the `vcodr` command line itself (`vcodr_server::cli`),
//! built inside the drills package so that its tests run exactly the
//! program of these sources (see `drills/Cargo.toml`).

fn main() {
    std::process::exit(vcodr_server::cli::main());
}
