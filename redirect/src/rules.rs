//! The rules as data: the exact, ordered iptables argument vectors one run executes, first
//! removing what an earlier run installed, then installing the chains and their jumps.

use std::fmt;

use crate::{ConfigError, INBOUND_CHAIN, OUTBOUND_CHAIN, RedirectConfig};

/// One iptables invocation: its arguments after the command and `-w` (which the applier adds:
/// it is how the command waits for the xtables lock, not part of the rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Removes what an earlier run installed; failing means there was nothing to remove.
    Remove(Vec<String>),
    /// Installs a chain or a rule; failing is an error.
    Install(Vec<String>),
}

impl Step {
    pub fn args(&self) -> &[String] {
        match self {
            Step::Remove(args) | Step::Install(args) => args,
        }
    }

    pub fn is_removal(&self) -> bool {
        matches!(self, Step::Remove(_))
    }
}

/// `iptables -t nat ...`, as printed for people (without `-w`).
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("iptables")?;
        for arg in self.args() {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// Every step of one run, in order, after validating `config`.
pub fn steps(config: &RedirectConfig) -> Result<Vec<Step>, ConfigError> {
    config.validate()?;
    let nat = |args: &[&str]| -> Vec<String> {
        ["-t", "nat"]
            .iter()
            .chain(args)
            .map(|a| (*a).to_owned())
            .collect()
    };
    let install = |args: &[&str]| Step::Install(nat(args));
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

    let mut steps = vec![
        Step::Remove(nat(&["-D", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN])),
        Step::Remove(nat(&["-D", "OUTPUT", "-p", "tcp", "-j", OUTBOUND_CHAIN])),
    ];
    for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
        steps.push(Step::Remove(nat(&["-F", chain])));
        steps.push(Step::Remove(nat(&["-X", chain])));
    }

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
        "127.0.0.0/8",
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
    Ok(steps)
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

    const REMOVALS: [&str; 6] = [
        "remove: iptables -t nat -D PREROUTING -p tcp -j LANYARD_INBOUND",
        "remove: iptables -t nat -D OUTPUT -p tcp -j LANYARD_OUTBOUND",
        "remove: iptables -t nat -F LANYARD_INBOUND",
        "remove: iptables -t nat -X LANYARD_INBOUND",
        "remove: iptables -t nat -F LANYARD_OUTBOUND",
        "remove: iptables -t nat -X LANYARD_OUTBOUND",
    ];

    #[test]
    fn the_default_rules_in_order() {
        let steps = steps(&RedirectConfig::default()).unwrap();
        let mut expected = REMOVALS.to_vec();
        expected.extend([
            "iptables -t nat -N LANYARD_INBOUND",
            "iptables -t nat -A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 4143",
            "iptables -t nat -A PREROUTING -p tcp -j LANYARD_INBOUND",
            "iptables -t nat -N LANYARD_OUTBOUND",
            "iptables -t nat -A LANYARD_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
            "iptables -t nat -A LANYARD_OUTBOUND -o lo -j RETURN",
            "iptables -t nat -A LANYARD_OUTBOUND -d 127.0.0.0/8 -j RETURN",
            "iptables -t nat -A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
            "iptables -t nat -A OUTPUT -p tcp -j LANYARD_OUTBOUND",
        ]);
        assert_eq!(lines(&steps), expected);
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
        let mut expected = REMOVALS.to_vec();
        expected.extend([
            "iptables -t nat -N LANYARD_INBOUND",
            "iptables -t nat -A LANYARD_INBOUND -p tcp --dport 4192 -j RETURN",
            "iptables -t nat -A LANYARD_INBOUND -p tcp --dport 4143 -j RETURN",
            "iptables -t nat -A LANYARD_INBOUND -p tcp -j REDIRECT --to-ports 15006",
            "iptables -t nat -A PREROUTING -p tcp -j LANYARD_INBOUND",
            "iptables -t nat -N LANYARD_OUTBOUND",
            "iptables -t nat -A LANYARD_OUTBOUND -m owner --uid-owner 7 -j RETURN",
            "iptables -t nat -A LANYARD_OUTBOUND -o lo -j RETURN",
            "iptables -t nat -A LANYARD_OUTBOUND -d 127.0.0.0/8 -j RETURN",
            "iptables -t nat -A LANYARD_OUTBOUND -p tcp --dport 5432 -j RETURN",
            "iptables -t nat -A LANYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
            "iptables -t nat -A OUTPUT -p tcp -j LANYARD_OUTBOUND",
        ]);
        assert_eq!(lines(&steps(&config).unwrap()), expected);
    }

    #[test]
    fn an_invalid_config_gives_no_steps() {
        let config = RedirectConfig {
            skip_inbound_ports: vec![0],
            ..Default::default()
        };
        assert!(steps(&config).is_err());
    }
}
