//! Link the release binary with packed relative relocations (DT_RELR).
//!
//! A position-independent Rust binary carries one 24-byte relocation per
//! pointer in its read-only data (vtables, string tables): 480 KiB that the
//! dynamic loader reads at every start, so all of it stays resident. Packed,
//! they take a few KiB, and the idle daemon's peak RSS is 0.6 MiB lower
//! (docs/benchmarks.md, "A build for small code"). glibc reads them since
//! 2.36 (Debian 12); the .deb's `Depends` says so through dpkg-shlibdeps.
//! Debug builds (the tests) link as before.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    if release && linux_gnu {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
