//! Compiles the protos with protox (no system `protoc`), generates the tonic code and keeps the
//! encoded descriptor set for server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "alp/common/v1/common.proto",
    "alp/content/v1/content.proto",
    "alp/user/v1/user.proto",
    "alp/scoring/v1/scoring.proto",
    "alp/scheduler/v1/scheduler.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    // tonic-prost-build only prints rerun-if-changed when it runs protoc itself.
    println!("cargo:rerun-if-changed={}", root.display());
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let descriptors = protox::Compiler::new([&root])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("alp_descriptor.bin"), descriptors.encode_to_vec())?;

    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
