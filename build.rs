//! Release-only link settings that make the idle daemon small in memory
//! (docs/benchmarks.md, "A build for small code" and "The code an idle
//! daemon runs, laid out together"). Debug builds (the tests) link as
//! before.
//!
//! - Packed relative relocations (DT_RELR). A position-independent Rust
//!   binary carries one 24-byte relocation per pointer in its read-only
//!   data (vtables, string tables): 480 KiB that the dynamic loader reads at
//!   every start, so all of it stays resident. Packed, they take a few KiB.
//!   glibc reads them since 2.36 (Debian 12); the .deb's `Depends` says so.
//! - The functions an idle daemon runs, placed side by side
//!   (`link/idle-code.order`, written by `link/regen`). The kernel maps a
//!   binary's code in 64 KiB at a time around each page first run, so 1.9
//!   MiB of functions scattered over 7 MiB of code kept 6.4 MiB resident.
//!   The order is a hint: a name the build no longer has is passed over, so
//!   a stale file costs memory, never correctness. Only LLD reads it; it is
//!   the linker rustc uses for x86_64-unknown-linux-gnu since 1.90.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/idle-code.order");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    if !(release && linux_gnu) {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    if links_with_lld() {
        let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/idle-code.order");
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether the binary is linked by rustc's own LLD: the default for
/// x86_64-unknown-linux-gnu from Rust 1.90, unless the build chose another
/// linker through its flags. GNU ld would refuse `--symbol-ordering-file`.
fn links_with_lld() -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" || flags.contains("linker") {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let mut numbers = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
