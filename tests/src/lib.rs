//! Test support: sandboxes of real namespaces, the datapaths to run every
//! scenario against, and the harness that runs the TC programs through
//! BPF_PROG_TEST_RUN (`tc`) on frames built by `frames`.

pub mod cni;
pub mod docker;
pub mod frames;
pub mod host_state;
pub mod ledger;
pub mod output;
pub mod podman;
pub mod sandbox;
pub mod tc;

pub use sandbox::Sandbox;

/// Set to `1` to skip the tests that need root instead of failing them.
pub const SKIP_PRIVILEGED_ENV: &str = "NETCTL_SKIP_PRIVILEGED";

/// Whether a test that needs root (namespaces, BPF programs, cgroups) may
/// run: always as root. Without root the test fails, unless
/// `NETCTL_SKIP_PRIVILEGED=1` asks to skip it, which is said on stderr: a
/// plain `cargo test` without root is never silently green.
pub fn privileged(needs: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var(SKIP_PRIVILEGED_ENV).as_deref() == Ok("1") {
        eprintln!("skipped ({SKIP_PRIVILEGED_ENV}=1): needs root for {needs}");
        ledger::record("skipped", needs);
        return false;
    }
    panic!("needs root for {needs}: run as root, or set {SKIP_PRIVILEGED_ENV}=1 to skip this test");
}

/// Instantiates each test body `fn NAME(datapath: &str)` once per datapath,
/// as `iptables::NAME` and `ebpf::NAME`; they need root ([`privileged`]).
#[macro_export]
macro_rules! on_both_datapaths {
    ($($name:ident),* $(,)?) => {
        mod iptables {
            $( #[test] fn $name() { if $crate::privileged("sandboxes") { super::$name("iptables") } } )*
        }
        mod ebpf {
            $( #[test] fn $name() { if $crate::privileged("sandboxes") { super::$name("ebpf") } } )*
        }
    };
}
