//! Compiles the `.proto` files with protox (a pure-Rust protobuf compiler), so a fresh machine
//! builds with `cargo` alone and no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/workload.proto",
        "proto/lanyard/identity/v1/identity.proto",
        "proto/lanyard/discovery/v1/discovery.proto",
        // The CSI spec v1.12.0, vendored verbatim (see proto/csi/v1/README.md).
        "proto/csi/v1/csi.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
