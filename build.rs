//! Compiles `proto/` (the project's own gRPC API: remote review of the audit trail) with
//! protox, a protobuf compiler in Rust, so that building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["mcp_otel/audit/v1/audit.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)?;
    Ok(())
}
