//! Project tasks: `cargo xtask deps | build | test | run | bench`.
//!
//! Everything needs root (packages, bpffs, namespaces); every command xtask
//! runs is printed before it runs.

mod bench;
mod cmd;
mod demo;
mod deps;
mod ledger;
mod sandbox;
mod snapshot;
mod testing;
mod tools;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "netctl's project tasks (run as root)")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks (apt packages, nightly rust-src,
    /// bpf-linker, bpffs); quick and silent when nothing is missing.
    Deps,
    /// deps, then `cargo build --release -p netctl` (builds the eBPF object too).
    Build,
    /// deps, fmt, clippy, the whole test suite as root, and a check that the
    /// tests left nothing behind in the root namespace.
    Test {
        /// Run the suite several times, with more threads, leak-checking each
        /// round; then the #[ignore]d tests that take minutes, once.
        #[arg(long)]
        stress: bool,
    },
    /// The demo: a sandbox, a network, three containers, one check per scenario.
    Run {
        #[arg(long, value_enum, default_value_t)]
        datapath: demo::Datapath,
        /// Leave the sandbox in place (and print how to remove it).
        #[arg(long)]
        keep: bool,
    },
    /// Remove a sandbox that `run --keep` left (PREFIX is `ncd<pid>`).
    DemoTeardown { prefix: String },
    /// Benchmarks: netctl's datapaths against a no-NAT ceiling, CNI and
    /// netavark, in sandboxes; writes target/bench/report.{md,json} and SVGs.
    Bench {
        /// One repetition of 1-second runs, a reduced plan that still covers
        /// every path and every metric (under 3 minutes once built).
        #[arg(long)]
        quick: bool,
        /// Only these configurations (comma-separated: veth, iptables,
        /// ebpf, cni, netavark, nft); the ratios need veth and iptables.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Also sample every CPU with `perf record -e cpu-clock -g` during
        /// the eBPF profiling runs (target/bench/perf-PATH-METRIC.data).
        #[arg(long)]
        perf: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Deps => deps::ensure(),
        Task::Build => tools::build_netctl(),
        Task::Test { stress } => testing::test(stress),
        Task::Run { datapath, keep } => demo::run_demo(datapath, keep),
        Task::DemoTeardown { prefix } => demo::teardown(&prefix),
        Task::Bench { quick, only, perf } => bench::bench(bench::Options { quick, only, perf }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
