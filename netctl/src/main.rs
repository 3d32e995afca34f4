//! `netctl`: parses the command line, enters the host namespace, runs the
//! command and turns errors into one line and an exit code (1 usage or
//! validation, 2 system). With `CNI_COMMAND` set it is a CNI plugin instead.

use clap::Parser as _;
use netctl::cli::{self, Cli};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // A container runtime calling netctl as a CNI plugin.
    if std::env::var_os("CNI_COMMAND").is_some() {
        std::process::exit(netctl::cni::run_plugin());
    }
    let cli = Cli::try_parse().unwrap_or_else(|err| match cli::refused_value(&err) {
        Some(refused) => fail(refused),
        None => err.exit(),
    });
    if let Err(err) = run(cli) {
        fail(&err);
    }
}

fn fail(err: &netctl::error::Error) -> ! {
    eprintln!("netctl: {err}");
    std::process::exit(err.exit_code());
}

fn run(cli: Cli) -> netctl::error::Result<()> {
    if let Some(name) = &cli.host_netns {
        // Before any thread exists: everything below runs in the host namespace.
        netctl::netns::enter_for_good(name)?;
    }
    // One thread: setns() acts per thread, and the namespace guards rely on
    // every await running on this one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| netctl::error::Error::system("tokio runtime", e))?;
    runtime.block_on(cli::run(cli))
}
