//! What the datapath shows: `conntrack`, `stats`, `trace`, `version` and
//! `doctor`, their arguments and their output.

use clap::{Args, Subcommand};

use super::{
    output::{print_json, print_listing, print_table},
    Format,
};
use crate::{
    datapath::ebpf,
    error::{Error, Result},
    ops::Host,
    trace,
};

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Stop after this many seconds (1 to 86400) [default: until Ctrl-C].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub seconds: Option<u64>,
    /// Events of this container (its address, before or after translation,
    /// or its veth).
    #[arg(long = "container", value_name = "NAME")]
    pub containers: Vec<String>,
    /// Events touching this network (its containers or its subnet).
    #[arg(long = "network", value_name = "NAME")]
    pub networks: Vec<String>,
    /// Events with this port (source or destination, before or after
    /// translation).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// tcp, udp, icmp or a protocol number.
    #[arg(long = "proto", value_name = "PROTO", value_parser = trace::parse_protocol)]
    pub protocols: Vec<u8>,
    /// new, drop, end, or a drop reason (as `netctl stats` names it).
    #[arg(long = "verdict", value_name = "VERDICT")]
    pub verdicts: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ConntrackCommand {
    /// List translated flows (one entry per direction).
    #[command(alias = "list")]
    Ls,
    /// Remove every entry (established flows are re-created only for
    /// published ports; SNAT flows then break, as with `conntrack -F`).
    Flush,
    /// Remove expired entries.
    Gc,
}

/// `netctl version`: the binary's versions, then the loaded datapath's.
pub(super) fn version(host: &Host, format: Format) -> Result<()> {
    let (binary, loaded) = host.versions()?;
    let datapath = host.state.datapath.map(|d| d.to_string());
    if format == Format::Json {
        return print_json(&serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "binary": binary,
            "host_datapath": datapath,
            "loaded": loaded,
        }));
    }
    let describe = |v: &ebpf::Versions| {
        let maps: Vec<String> = v.maps.iter().map(|(n, l)| format!("{n} {l}")).collect();
        format!(
            "datapath {}, object {}, map layouts: {}",
            v.datapath,
            v.object
                .as_deref()
                .unwrap_or("unknown (loaded before layout records)"),
            maps.join(", ")
        )
    };
    println!("netctl {}", env!("CARGO_PKG_VERSION"));
    println!("binary: {}", describe(&binary));
    match (&loaded, datapath) {
        (Some(v), _) => println!("loaded: {}", describe(v)),
        (None, Some(kind)) if kind != "ebpf" => println!("loaded: the {kind} datapath"),
        (None, _) => println!("loaded: none"),
    }
    Ok(())
}

/// Prints every difference; fails (exit 1) when some remain, so that a
/// script can use `netctl doctor` as a check.
pub(super) async fn doctor(mut host: Host, fix: bool, format: Format) -> Result<()> {
    let findings = host.doctor(fix).await?;
    if format == Format::Json {
        print_json(&findings)?;
    } else {
        for f in &findings {
            let mark = if f.fixed { " (fixed)" } else { "" };
            println!("{}: {}{mark}", f.object, f.problem);
        }
        if findings.is_empty() {
            println!("state and kernel agree");
        }
    }
    let left = findings.iter().filter(|f| !f.fixed).count();
    match (left, fix) {
        (0, _) => Ok(()),
        (n, false) => Err(Error::invalid(
            "doctor",
            format!("{n} difference(s) between the state and the kernel; `netctl doctor --fix` repairs them"),
        )),
        (n, true) => Err(Error::system("doctor --fix", format!("{n} difference(s) remain"))),
    }
}

pub(super) fn conntrack(host: &Host, cmd: ConntrackCommand, format: Format) -> Result<()> {
    match cmd {
        ConntrackCommand::Ls => print_listing(
            format,
            &host.conntrack_list()?,
            &[
                "PROTO", "SRC", "DST", "TO SRC", "TO DST", "KIND", "DIR", "STATE", "IDLE",
                "PACKETS", "BYTES",
            ],
            |f| {
                vec![
                    f.proto.to_string(),
                    f.src.clone(),
                    f.dst.clone(),
                    f.translated_src.clone(),
                    f.translated_dst.clone(),
                    f.kind.to_string(),
                    f.direction.to_string(),
                    f.state.to_string(),
                    format!("{}s", f.idle_seconds),
                    f.packets.to_string(),
                    f.bytes.to_string(),
                ]
            },
        ),
        ConntrackCommand::Flush => {
            let n = host.conntrack_flush()?;
            println!("{n} entries removed");
            Ok(())
        }
        ConntrackCommand::Gc => {
            let n = host.conntrack_gc()?;
            println!("{n} expired entries removed");
            Ok(())
        }
    }
}

pub(super) fn stats(host: &Host, format: Format) -> Result<()> {
    let counters = host.stats()?;
    if format == Format::Json {
        let map: std::collections::BTreeMap<&str, serde_json::Value> = counters
            .iter()
            .map(|(name, c)| {
                (
                    *name,
                    serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
                )
            })
            .collect();
        return print_json(&map);
    }
    print_table(
        &["COUNTER", "PACKETS", "BYTES"],
        counters
            .iter()
            .map(|(name, c)| vec![name.to_string(), c.packets.to_string(), c.bytes.to_string()]),
    );
    Ok(())
}

/// `netctl trace`: its filters, then the events until Ctrl-C or --seconds.
pub(super) async fn trace(host: Host, args: TraceArgs, format: Format) -> Result<()> {
    let filters = trace::Filters {
        containers: args.containers,
        networks: args.networks,
        ports: args.ports,
        protocols: args.protocols,
        verdicts: args.verdicts,
    };
    host.trace(
        args.seconds,
        &filters,
        format == Format::Json,
        &mut std::io::stdout(),
    )
    .await
}
