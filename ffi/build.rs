//! Link settings of `libmicrocluster.so`: its SONAME and the version script that exports only
//! the `mc_*` symbols.

fn main() {
    let map = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("microcluster.map");
    println!("cargo:rerun-if-changed={}", map.display());
    // The SONAME carries the major version (bump it on ABI breaks); `make install` names the
    // file libmicrocluster.so.<version> with this name as a symlink.
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libmicrocluster.so.{major}");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        map.display()
    );
}
