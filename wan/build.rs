//! With the `tch` feature: compiles `csrc/torch_determinism.cpp` against the torch that
//! torch-sys built against (its `links = "tch"` metadata gives the library folder; the headers
//! sit beside it in `include/`). Without the feature there is nothing to build.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    build_shim();
}

#[cfg(feature = "tch")]
fn build_shim() {
    use std::path::PathBuf;
    println!("cargo:rerun-if-changed=csrc/torch_determinism.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            panic!(
                "torch-sys did not report its libtorch folder (DEP_TCH_LIBTORCH_LIB); \
             run `eval \"$(scripts/install-libtorch.sh)\"` before building with `--features tch`"
            )
        });
    let root = lib
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| lib.clone());
    let include = root.join("include");
    assert!(
        include.join("ATen").join("Context.h").exists(),
        "no ATen/Context.h under {}: the torch install has no C++ headers",
        include.display()
    );
    // PyPI's torch 2.x is built with the C++11 ABI; the shim's interface has no std types, so
    // this only has to match for the headers' inline code.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .std("c++17")
        .include(&include)
        .include(
            include
                .join("torch")
                .join("csrc")
                .join("api")
                .join("include"),
        )
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .file("csrc/torch_determinism.cpp")
        .compile("wan_torch_determinism");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=torch_cpu");
    println!("cargo:rustc-link-lib=c10");
}

#[cfg(not(feature = "tch"))]
fn build_shim() {}
