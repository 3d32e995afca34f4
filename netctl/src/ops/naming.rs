//! The checks of Docker's naming flags: `--hostname`, `--network-alias`
//! (`network connect --alias`), `--dns-search`, `--dns-option` (`--dns`
//! is an address, parsed by the command line). Pure: request and state in,
//! a one-line refusal naming the object out.

use crate::{
    error::{Error, Result},
    ipam,
    model::{Naming, Network, NetworkMode},
    state::State,
};

/// A DNS name: dot-separated labels of letters, digits, `-` and `_` (what
/// Docker's names are made of), none empty or longer than 63, 253 in all.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
        })
}

/// The flags of `container run` that do not depend on the state.
pub fn check_naming(container: &str, mode: &NetworkMode, naming: &Naming) -> Result<()> {
    let object = || format!("container {container}");
    let given = [
        ("--hostname", naming.hostname.is_some()),
        ("--dns", !naming.dns.servers.is_empty()),
        ("--dns-search", !naming.dns.search.is_empty()),
        ("--dns-option", !naming.dns.options.is_empty()),
        ("--network-alias", !naming.aliases.is_empty()),
    ];
    // The host's namespace and another container's have their own names
    // and resolver files; Docker refuses these too.
    if matches!(mode, NetworkMode::Host | NetworkMode::Container(_)) {
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            return Err(Error::invalid(
                object(),
                format!("{flag} cannot be used in {mode} network mode"),
            ));
        }
    }
    if *mode == NetworkMode::None && !naming.aliases.is_empty() {
        return Err(Error::invalid(
            object(),
            "--network-alias cannot be used in none network mode",
        ));
    }
    if let Some(hostname) = &naming.hostname {
        if !is_dns_name(hostname) || hostname.len() > 64 {
            return Err(Error::invalid(
                object(),
                format!("invalid --hostname {hostname:?}: letters, digits, '-', '_' and dots, at most 64"),
            ));
        }
    }
    for domain in &naming.dns.search {
        if !is_dns_name(domain.trim_end_matches('.')) {
            return Err(Error::invalid(
                object(),
                format!("invalid --dns-search {domain:?}: not a domain name"),
            ));
        }
    }
    for option in &naming.dns.options {
        let ok = !option.is_empty()
            && option
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'#' && b != b';');
        if !ok {
            return Err(Error::invalid(
                object(),
                format!("invalid --dns-option {option:?}: one word, as in resolv.conf"),
            ));
        }
    }
    Ok(())
}

/// Aliases for `container` on `net`: valid names, on a user-defined
/// network, none taken there already (by a container's name or alias),
/// none given twice.
pub fn check_aliases(
    state: &State,
    net: &Network,
    container: &str,
    aliases: &[String],
) -> Result<()> {
    let object = || format!("container {container}");
    if aliases.is_empty() {
        return Ok(());
    }
    if !net.dns {
        return Err(Error::invalid(
            object(),
            format!(
                "network-scoped aliases are only supported on user-defined networks, not {}",
                net.name
            ),
        ));
    }
    let mut taken: Vec<String> = Vec::new();
    for member in state.members(&net.name).filter(|c| c.name != container) {
        taken.push(member.name.to_ascii_lowercase());
        taken.extend(
            member
                .aliases(&net.name)
                .iter()
                .map(|a| a.to_ascii_lowercase()),
        );
    }
    let mut given: Vec<String> = Vec::new();
    for alias in aliases {
        ipam::check_name("alias", alias).map_err(|e| {
            let reason = match e {
                Error::Invalid { reason, .. } => reason,
                other => other.to_string(),
            };
            Error::invalid(object(), format!("--network-alias {alias:?}: {reason}"))
        })?;
        let lower = alias.to_ascii_lowercase();
        if lower == container.to_ascii_lowercase() || given.contains(&lower) {
            return Err(Error::invalid(
                object(),
                format!("alias {alias} is given twice on network {}", net.name),
            ));
        }
        if taken.contains(&lower) {
            return Err(Error::invalid(
                object(),
                format!("alias {alias} is already a name on network {}", net.name),
            ));
        }
        given.push(lower);
    }
    Ok(())
}

/// A new container's name must not be an alias on its network already.
pub fn check_name_free(state: &State, net: &Network, container: &str) -> Result<()> {
    let lower = container.to_ascii_lowercase();
    let holder = state.members(&net.name).find(|c| {
        c.aliases(&net.name)
            .iter()
            .any(|a| a.to_ascii_lowercase() == lower)
    });
    match holder {
        Some(c) => Err(Error::invalid(
            format!("container {container}"),
            format!(
                "name is an alias of container {} on network {}",
                c.name, net.name
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in ["web", "a.b-c_d", "x1", &"a".repeat(63)] {
            assert!(is_dns_name(good), "{good}");
        }
        for bad in ["", "a..b", "-a", "a b", "é", &"a".repeat(64), "a/b"] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
