//! The command line's wiring, one module per subcommand: parse the flags, build the pipeline
//! from the library's stages, run it, turn the outcome into an exit code. `main.rs` only
//! dispatches. Public so that the binary can use it; not an API to build on.

pub mod audit;
pub mod collect;
pub mod proxy;
