//! `vcodr`: parses the command line and runs it (see `vcodr --help`).

/// mimalloc, not glibc's malloc: measured under sync writes (write-vs-pg).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(vcodr_server::cli::main());
}
