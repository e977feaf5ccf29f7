//! Whether a network namespace holds the rules a list of [`Step`]s installs (the CNI
//! plugin's CHECK): every appended rule present (`iptables -C`, so iptables itself compares
//! them, whatever its backend prints), and Lanyard's own chains holding nothing else, with
//! their REDIRECT last. Within a chain only the RETURN rules could be reordered unnoticed, and
//! their order does not change what the chain does.

use std::collections::BTreeMap;
use std::fmt;

use crate::{ApplyError, Coverage, Family, Iptables, Step, rules::Action};

/// One way the namespace differs from the steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// One of Lanyard's chains does not exist.
    MissingChain { family: Family, chain: String },
    /// A rule is missing (shown as the command that would append it).
    MissingRule { family: Family, rule: String },
    /// One of Lanyard's chains holds another number of rules.
    RuleCount {
        family: Family,
        chain: String,
        expected: usize,
        found: usize,
    },
    /// One of Lanyard's chains does not end with its REDIRECT.
    RedirectNotLast { family: Family, chain: String },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::MissingChain { family, chain } => {
                write!(f, "{family}: chain {chain} is missing")
            }
            Difference::MissingRule { family, rule } => {
                write!(f, "{family}: rule missing: {rule}")
            }
            Difference::RuleCount {
                family,
                chain,
                expected,
                found,
            } => write!(
                f,
                "{family}: chain {chain} holds {found} rules where Lanyard installs {expected}"
            ),
            Difference::RedirectNotLast { family, chain } => {
                write!(f, "{family}: chain {chain} does not end with its REDIRECT")
            }
        }
    }
}

/// What [`Iptables::check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The families looked at (IPv6 only where the namespace has an IPv6 nat table).
    pub coverage: Coverage,
    /// Empty when the namespace holds exactly the rules.
    pub differences: Vec<Difference>,
}

impl Iptables {
    /// Compares the current network namespace with the install steps among `steps` (see the
    /// module docs). Running the commands at all failing is the error; a difference is not.
    pub fn check(&self, steps: &[Step]) -> Result<Checked, ApplyError> {
        let coverage = if steps.iter().any(|s| s.family() == Family::Ipv6) {
            self.ipv6_coverage()?
        } else {
            Coverage::Both
        };
        let mut differences = Vec::new();
        for family in Family::ALL {
            if !coverage.covers(family) {
                continue;
            }
            let family_steps: Vec<&Step> = steps.iter().filter(|s| s.family() == family).collect();
            self.check_family(family, &family_steps, &mut differences)?;
        }
        Ok(Checked {
            coverage,
            differences,
        })
    }

    fn check_family(
        &self,
        family: Family,
        steps: &[&Step],
        differences: &mut Vec<Difference>,
    ) -> Result<(), ApplyError> {
        // Lanyard's chains (those the steps create), with the rules appended to each.
        let mut own: BTreeMap<&str, Vec<&[String]>> = BTreeMap::new();
        for step in steps {
            if step.action == Action::Install
                && step.args.get(2).is_some_and(|a| a == "-N")
                && let Some(chain) = step.args.get(3)
            {
                own.entry(chain.as_str()).or_default();
            }
        }
        for step in steps {
            if let Some((chain, rule)) = step.appended_rule()
                && let Some(rules) = own.get_mut(chain)
            {
                rules.push(rule);
            }
        }
        let mut missing_chains = Vec::new();
        for (chain, expected) in &own {
            let listing = self.output(family, &["-t", "nat", "-S", chain])?;
            if !listing.status.success() {
                differences.push(Difference::MissingChain {
                    family,
                    chain: (*chain).to_owned(),
                });
                missing_chains.push(*chain);
                continue;
            }
            let text = String::from_utf8_lossy(&listing.stdout);
            let prefix = format!("-A {chain} ");
            let found: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
            if found.len() != expected.len() {
                differences.push(Difference::RuleCount {
                    family,
                    chain: (*chain).to_owned(),
                    expected: expected.len(),
                    found: found.len(),
                });
            }
            let ends_with_redirect =
                |rule: &[String]| rule.windows(2).any(|w| w[0] == "-j" && w[1] == "REDIRECT");
            let last_expected = expected.last().is_some_and(|r| ends_with_redirect(r));
            let last_found = found.last().is_some_and(|l| l.contains(" -j REDIRECT"));
            if last_expected && !last_found {
                differences.push(Difference::RedirectNotLast {
                    family,
                    chain: (*chain).to_owned(),
                });
            }
        }
        for step in steps {
            let Some((chain, _)) = step.appended_rule() else {
                continue;
            };
            if missing_chains.contains(&chain) {
                continue;
            }
            let mut args = step.args.clone();
            args[2] = "-C".into();
            if !self.output(family, &args)?.status.success() {
                differences.push(Difference::MissingRule {
                    family,
                    rule: step.to_string(),
                });
            }
        }
        Ok(())
    }
}
