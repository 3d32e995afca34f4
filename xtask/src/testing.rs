//! `cargo xtask test [--stress]`: formatting, lints, the whole test suite as
//! root, and a leak check of the root namespace around the test run.
//! `--stress` also runs, once, the tests marked `#[ignore]` for taking
//! minutes (1,000 containers on one network).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    cmd::{cargo, run, run_tests, step, workspace_root},
    deps,
    ledger::Ledger,
    snapshot::{Leak, Snapshot},
};

/// With `--stress` the suite runs this many times in a row, with more test
/// threads than CPUs, and the leak check follows every round: flaky tests
/// and leaks that need concurrency show up.
const STRESS_ROUNDS: u32 = 5;
const STRESS_THREADS_PER_CPU: usize = 4;
/// How long a process left when the tests end may take to finish exiting.
const PROCESS_GRACE: Duration = Duration::from_secs(3);
/// no_std, bpf target only: built by netctl's build.rs, linted on its own
/// target, left out of host builds (a host build fails on its panic handler).
const EBPF_CRATE: &str = "netctl-ebpf";

pub fn test(stress: bool) -> Result<()> {
    deps::ensure()?;

    step("formatting (cargo fmt --check)");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;

    step("lints (clippy, warnings are errors)");
    run(cargo()
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            EBPF_CRATE,
            "--all-targets",
        ])
        .args(["--", "-D", "warnings"]))?;

    step("lints of the eBPF crate (for its own target, nightly)");
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "clippy", "-p", EBPF_CRATE])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .current_dir(workspace_root()))?;

    step("building the binaries the tests drive (netctl, nettool)");
    run(cargo().args(["build", "--workspace", "--exclude", EBPF_CRATE, "--bins"]))?;

    step("snapshot of the root namespace before the tests");
    let before = Snapshot::take()?;
    println!("{}", before.summary());

    let rounds = if stress { STRESS_ROUNDS } else { 1 };
    for round in 1..=rounds {
        let what = format!("tests, round {round}/{rounds} (as root: they create namespaces)");
        let extra = if stress {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            vec![format!("--test-threads={}", cpus * STRESS_THREADS_PER_CPU)]
        } else {
            Vec::new()
        };
        checked_run(&what, &extra, &before)?;
    }
    if stress {
        // One at a time: each makes 1,000 namespaces on its own.
        checked_run(
            "stress tests (the #[ignore]d ones, once; they take minutes)",
            &["--ignored".into(), "--test-threads=1".into()],
            &before,
        )?;
    }
    println!("\nall checks passed");
    Ok(())
}

/// One `cargo test` run (`harness_args` go to the test binaries), then its
/// sandbox ledger and the leak check of the root namespace against `before`.
fn checked_run(what: &str, harness_args: &[String], before: &Snapshot) -> Result<()> {
    let started = Instant::now();
    step(what);
    let ledger = Ledger::fresh()?;
    let mut cmd = cargo_test();
    ledger.attach(&mut cmd);
    if !harness_args.is_empty() {
        cmd.arg("--").args(harness_args);
    }
    let (result, totals) = run_tests(&mut cmd);
    println!("tests took {:.1} s", started.elapsed().as_secs_f64());
    let result = result.and_then(|()| ledger.verify().map(|summary| println!("{summary}")));
    // One plain closing line for the whole workspace (the last of
    // cargo's own lines is often a crate's empty doc-test run).
    println!(
        "{} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );

    step("leak check: the root namespace after the tests");
    let leaks = leaks_after_grace(before)?;
    for leak in &leaks {
        println!("LEAKED {leak}");
    }
    if leaks.is_empty() {
        println!("nothing left behind");
    }
    leak_verdict(result, leaks.len())
}

/// The leaks since `before`. A process gets a moment to finish exiting (one
/// its test killed last may not be reaped yet); each one that went in that
/// moment is said, one still there after it is a leak.
fn leaks_after_grace(before: &Snapshot) -> Result<Vec<Leak>> {
    let started = Instant::now();
    let first = Snapshot::take()?.leaks_since(before);
    let mut leaks = first.clone();
    while leaks.iter().any(Leak::is_process) && started.elapsed() < PROCESS_GRACE {
        std::thread::sleep(Duration::from_millis(100));
        leaks = Snapshot::take()?.leaks_since(before);
    }
    for gone in first
        .iter()
        .filter(|l| l.is_process() && !leaks.contains(l))
    {
        println!(
            "{gone}: still exiting when the tests ended, gone within {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(leaks)
}

/// `cargo test` of the workspace (the eBPF crate aside). Every test binary
/// runs: a failure in one does not hide the others'.
fn cargo_test() -> Command {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        EBPF_CRATE,
    ]);
    cmd
}

/// The outcome of a test run and the leak check after it.
fn leak_verdict(result: Result<()>, leaks: usize) -> Result<()> {
    match (result, leaks) {
        (Ok(()), 0) => Ok(()),
        (Ok(()), n) => bail!("the tests passed but left {n} object(s) behind (listed above)"),
        (Err(e), 0) => Err(e),
        (Err(e), n) => bail!("{e}; and the tests left {n} object(s) behind (listed above)"),
    }
}
