// Shared by the build scripts of every crate that links libtorch (trainer, tests).
//
// Why: torch-sys puts its rpath only on its own static helper library, so a binary
// built against the venv's libtorch would need LD_LIBRARY_PATH at run time. And
// rustc links with --as-needed, which drops libtorch_cuda (nothing references it
// by symbol), so `tch::Cuda::is_available()` would be false on a GPU machine.

fn libtorch_link() {
    // torch-sys declares `links = "tch"`, so its `cargo:libtorch_lib=` reaches
    // direct dependents as DEP_TCH_LIBTORCH_LIB.
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is unset: no rpath to libtorch emitted");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
