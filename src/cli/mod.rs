//! The command line's wiring, one module per subcommand: parse the flags, build the pipeline
//! from the library's stages, run it, turn the outcome into an exit code. `main.rs` only
//! dispatches. Public so that the binary can use it; not an API to build on.

pub mod audit;
pub mod collect;
pub mod proxy;

/// Prints `error` to stderr after `command: `, then each error under it (`  caused by: …`).
pub fn print_error(command: &str, error: &dyn std::error::Error) {
    eprintln!("{command}: {error}");
    let mut source = error.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
}
