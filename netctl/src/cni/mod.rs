//! netctl as a CNI plugin (spec 1.1): when the binary starts with
//! `CNI_COMMAND` set, a container runtime is calling it. An attachment
//! becomes a netctl container on the network named by the configuration,
//! so the CLI (`container ls`, `network inspect`, `conntrack ls`, `stats`)
//! shows it and one state file serves both fronts.
//!
//! [`config`] reads the environment and stdin, [`result`] prints results
//! and error objects per version, [`delegate`] execs an IPAM plugin,
//! [`commands`] runs ADD, DEL, CHECK, VERSION, STATUS and GC.

pub mod commands;
pub mod config;
pub mod delegate;
pub mod result;

use std::io::Read as _;

use config::{Env, LATEST_VERSION};

/// Runs one plugin invocation and returns the process exit code. The result
/// or the error object goes to stdout, a one-line error also to stderr.
pub fn run_plugin() -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = requested_version(&stdin);
    let outcome = match read {
        Ok(_) => Env::from_process().and_then(|env| commands::run(&env, &stdin)),
        Err(e) => Err(result::CniError::new(
            result::Code::DecodeFailed,
            format!("stdin: {e}"),
        )),
    };
    match outcome {
        Ok(Some(value)) => {
            println!("{value}");
            0
        }
        Ok(None) => 0,
        Err(err) => {
            println!("{}", err.to_json(&version));
            eprintln!("netctl: {err}");
            1
        }
    }
}

/// The `cniVersion` of the input, for the error object (the newest one when
/// the input has none).
fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .unwrap_or_else(|| LATEST_VERSION.to_owned())
}
