//! The rules as data: the exact, ordered iptables and ip6tables argument vectors one run
//! executes, per address family first removing what an earlier run installed, then installing
//! the chains and their jumps. IPv4 comes first, then the same rules for IPv6 (with `::1`
//! where IPv4 has `127.0.0.0/8`).

use std::fmt;

use crate::{ConfigError, INBOUND_CHAIN, OUTBOUND_CHAIN, RedirectConfig};

/// The address family a step is for: which command runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `iptables`.
    Ipv4,
    /// `ip6tables`.
    Ipv6,
}

impl Family {
    /// Both families, in the order the rules are installed.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// The command's usual name (`iptables`, `ip6tables`).
    pub fn command(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        }
    }

    /// The loopback destinations the outbound chain leaves alone.
    pub fn loopback(self) -> &'static str {
        match self {
            Family::Ipv4 => "127.0.0.0/8",
            Family::Ipv6 => "::1/128",
        }
    }
}

/// `ipv4`, `ipv6`: also the label in logs.
impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        })
    }
}

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Removes what an earlier run installed; failing means there was nothing to remove.
    Remove,
    /// Installs a chain or a rule; failing is an error.
    Install,
}

/// One iptables (or ip6tables) invocation: its arguments after the command and `-w` (which
/// the applier adds: it is how the command waits for the xtables lock, not part of the rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub family: Family,
    pub action: Action,
    pub args: Vec<String>,
}

impl Step {
    fn new(family: Family, action: Action, args: &[&str]) -> Self {
        Self {
            family,
            action,
            args: ["-t", "nat"]
                .iter()
                .chain(args)
                .map(|a| (*a).to_owned())
                .collect(),
        }
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn is_removal(&self) -> bool {
        self.action == Action::Remove
    }

    /// For an install step that appends a rule (`-A CHAIN ...`): the chain and the rule's
    /// arguments after the chain name.
    pub fn appended_rule(&self) -> Option<(&str, &[String])> {
        match (self.action, self.args.get(2).map(String::as_str)) {
            (Action::Install, Some("-A")) => {
                let chain = self.args.get(3)?;
                Some((chain, &self.args[4..]))
            }
            _ => None,
        }
    }
}

/// `iptables -t nat ...` (or `ip6tables ...`), as printed for people (without `-w`).
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.family.command())?;
        for arg in self.args() {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// Every step of one run, in order, after validating `config`: for IPv4 then IPv6, the
/// removals of [`removal_steps`] followed by the installs.
pub fn steps(config: &RedirectConfig) -> Result<Vec<Step>, ConfigError> {
    config.validate()?;
    let mut steps = Vec::new();
    for family in Family::ALL {
        steps.extend(family_removals(family));
        steps.extend(family_installs(config, family));
    }
    Ok(steps)
}

/// The steps that remove every rule and chain a run installed, both families (what the CNI
/// plugin's DEL runs). Each finds nothing to remove when there is nothing.
pub fn removal_steps() -> Vec<Step> {
    Family::ALL.into_iter().flat_map(family_removals).collect()
}

fn family_removals(family: Family) -> Vec<Step> {
    let remove = |args: &[&str]| Step::new(family, Action::Remove, args);
    let mut steps = vec![
        remove(&["-D", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN]),
        remove(&["-D", "OUTPUT", "-p", "tcp", "-j", OUTBOUND_CHAIN]),
    ];
    for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
        steps.push(remove(&["-F", chain]));
        steps.push(remove(&["-X", chain]));
    }
    steps
}

fn family_installs(config: &RedirectConfig, family: Family) -> Vec<Step> {
    let install = |args: &[&str]| Step::new(family, Action::Install, args);
    let skip = |chain: &str, port: u16| {
        install(&[
            "-A",
            chain,
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "RETURN",
        ])
    };
    let mut steps = Vec::new();

    // Inbound.
    steps.push(install(&["-N", INBOUND_CHAIN]));
    for &port in &config.skip_inbound_ports {
        steps.push(skip(INBOUND_CHAIN, port));
    }
    let inbound = config.inbound_port.to_string();
    steps.push(install(&[
        "-A",
        INBOUND_CHAIN,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &inbound,
    ]));
    steps.push(install(&[
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "-j",
        INBOUND_CHAIN,
    ]));

    // Outbound.
    steps.push(install(&["-N", OUTBOUND_CHAIN]));
    let uid = config.proxy_uid.to_string();
    steps.push(install(&[
        "-A",
        OUTBOUND_CHAIN,
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "RETURN",
    ]));
    steps.push(install(&["-A", OUTBOUND_CHAIN, "-o", "lo", "-j", "RETURN"]));
    steps.push(install(&[
        "-A",
        OUTBOUND_CHAIN,
        "-d",
        family.loopback(),
        "-j",
        "RETURN",
    ]));
    for &port in &config.skip_outbound_ports {
        steps.push(skip(OUTBOUND_CHAIN, port));
    }
    let outbound = config.outbound_port.to_string();
    steps.push(install(&[
        "-A",
        OUTBOUND_CHAIN,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &outbound,
    ]));
    steps.push(install(&[
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-j",
        OUTBOUND_CHAIN,
    ]));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| format!("{}{s}", if s.is_removal() { "remove: " } else { "" }))
            .collect()
    }

    fn removals(command: &str) -> Vec<String> {
        [
            "-D PREROUTING -p tcp -j LANYARD_INBOUND",
            "-D OUTPUT -p tcp -j LANYARD_OUTBOUND",
            "-F LANYARD_INBOUND",
            "-X LANYARD_INBOUND",
            "-F LANYARD_OUTBOUND",
            "-X LANYARD_OUTBOUND",
        ]
        .iter()
        .map(|r| format!("remove: {command} -t nat {r}"))
        .collect()
    }

    /// One family's lines: its removals, then `installs` (written with `IPT` for the command
    /// and `LOOPBACK` for its loopback destinations).
    fn family(family: Family, installs: &[&str]) -> Vec<String> {
        let mut lines = removals(family.command());
        lines.extend(installs.iter().map(|l| {
            l.replace("IPT", family.command())
                .replace("LOOPBACK", family.loopback())
        }));
        lines
    }

    #[test]
    fn the_default_rules_in_order_for_both_families() {
        let steps = steps(&RedirectConfig::default()).unwrap();
        let installs = [
            "IPT -t nat -N LANYARD_INBOUND",
            "IPT -t nat -A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 4143",
            "IPT -t nat -A PREROUTING -p tcp -j LANYARD_INBOUND",
            "IPT -t nat -N LANYARD_OUTBOUND",
            "IPT -t nat -A LANYARD_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
            "IPT -t nat -A LANYARD_OUTBOUND -o lo -j RETURN",
            "IPT -t nat -A LANYARD_OUTBOUND -d LOOPBACK -j RETURN",
            "IPT -t nat -A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
            "IPT -t nat -A OUTPUT -p tcp -j LANYARD_OUTBOUND",
        ];
        let mut expected = family(Family::Ipv4, &installs);
        expected.extend(family(Family::Ipv6, &installs));
        assert_eq!(lines(&steps), expected);
        assert!(
            lines(&steps).contains(
                &"iptables -t nat -A LANYARD_OUTBOUND -d 127.0.0.0/8 -j RETURN".to_owned()
            )
        );
        assert!(
            lines(&steps)
                .contains(&"ip6tables -t nat -A LANYARD_OUTBOUND -d ::1/128 -j RETURN".to_owned())
        );
        // Each argument is its own vector element (no shell splits them).
        assert_eq!(
            steps[7].args(),
            [
                "-t",
                "nat",
                "-A",
                "LANYARD_INBOUND",
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                "4143"
            ]
        );
        assert_eq!(
            steps[7].appended_rule(),
            Some(("LANYARD_INBOUND", &steps[7].args()[4..]))
        );
        assert_eq!(steps[6].appended_rule(), None, "-N is no rule");
        assert_eq!(steps[0].appended_rule(), None, "a removal is no rule");
        // Each family's steps run through its own command.
        let split = steps.len() / 2;
        assert!(steps[..split].iter().all(|s| s.family() == Family::Ipv4));
        assert!(steps[split..].iter().all(|s| s.family() == Family::Ipv6));
    }

    #[test]
    fn skip_ports_return_before_the_redirect_in_their_order() {
        let config = RedirectConfig {
            proxy_uid: 7,
            inbound_port: 15006,
            outbound_port: 15001,
            skip_inbound_ports: vec![4192, 4143],
            skip_outbound_ports: vec![5432],
        };
        let installs = [
            "IPT -t nat -N LANYARD_INBOUND",
            "IPT -t nat -A LANYARD_INBOUND -p tcp --dport 4192 -j RETURN",
            "IPT -t nat -A LANYARD_INBOUND -p tcp --dport 4143 -j RETURN",
            "IPT -t nat -A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 15006",
            "IPT -t nat -A PREROUTING -p tcp -j LANYARD_INBOUND",
            "IPT -t nat -N LANYARD_OUTBOUND",
            "IPT -t nat -A LANYARD_OUTBOUND -m owner --uid-owner 7 -j RETURN",
            "IPT -t nat -A LANYARD_OUTBOUND -o lo -j RETURN",
            "IPT -t nat -A LANYARD_OUTBOUND -d LOOPBACK -j RETURN",
            "IPT -t nat -A LANYARD_OUTBOUND -p tcp --dport 5432 -j RETURN",
            "IPT -t nat -A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
            "IPT -t nat -A OUTPUT -p tcp -j LANYARD_OUTBOUND",
        ];
        let mut expected = family(Family::Ipv4, &installs);
        expected.extend(family(Family::Ipv6, &installs));
        assert_eq!(lines(&steps(&config).unwrap()), expected);
    }

    #[test]
    fn removal_steps_are_the_removals_of_a_run() {
        let all = steps(&RedirectConfig::default()).unwrap();
        let from_run: Vec<Step> = all.into_iter().filter(Step::is_removal).collect();
        assert_eq!(removal_steps(), from_run);
        let mut expected = removals("iptables");
        expected.extend(removals("ip6tables"));
        assert_eq!(lines(&removal_steps()), expected);
    }

    #[test]
    fn an_invalid_config_gives_no_steps() {
        let config = RedirectConfig {
            skip_inbound_ports: vec![0],
            ..Default::default()
        };
        assert!(steps(&config).is_err());
    }

    #[test]
    fn family_labels() {
        assert_eq!(Family::Ipv4.to_string(), "ipv4");
        assert_eq!(Family::Ipv6.to_string(), "ipv6");
    }
}
