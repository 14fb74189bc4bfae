//! Compiles `proto/` (the project's own gRPC API: remote review of the audit trail) with
//! protox, a protobuf compiler in Rust, so that building needs no system `protoc`; and, for
//! release builds on x86-64 Linux, asks the linker to place the code `collect` runs together.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["mcp_otel/audit/v1/audit.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)?;
    hot_code_together();
    Ok(())
}

/// `linker/hot-symbols.txt` lists the functions `collect` runs (start-up and ingest), hottest
/// first, as `scripts/hot-symbols.sh` records them, under the names of both `cargo build
/// --release` and `cargo bench` (their dependencies' features differ, and so do half the names). The kernel maps an executable's code in
/// 64 KiB windows around each page touched, so those ~1,100 functions spread over a 13 MiB text
/// kept about 7 MiB of it resident; placed together they need under 2 MiB. Only for rustc's own
/// linker on x86-64 Linux (LLD, the default since Rust 1.90), and only in release builds, where
/// the symbol names match; a name that no longer exists is ignored.
fn hot_code_together() {
    let ordering = "linker/hot-symbols.txt";
    println!("cargo:rerun-if-changed={ordering}");
    let var = |name| std::env::var(name).unwrap_or_default();
    if var("PROFILE") != "release" || var("TARGET") != "x86_64-unknown-linux-gnu" {
        return;
    }
    let path = format!("{}/{ordering}", var("CARGO_MANIFEST_DIR"));
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={path}");
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}
