//! The check behind every binary's "`--help` shows every default" test: options that take a
//! value, are optional, and show no default (clap's own or a `[default: ...]` in the help text,
//! for defaults applied after the config file is merged) are listed, unless the caller names
//! them as having none.

/// Every option of `command` and its subcommands, as `"sub --long"`, that takes a value, is
/// optional, shows no default and is not in `without_default`.
pub fn options_missing_default(command: &clap::Command, without_default: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    walk(command, "", without_default, &mut missing);
    missing
}

fn walk(command: &clap::Command, path: &str, without_default: &[&str], missing: &mut Vec<String>) {
    for arg in command.get_arguments() {
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let Some(long) = arg.get_long() else { continue };
        let name = format!("{path} --{long}").trim().to_owned();
        if arg.get_action().takes_values()
            && !arg.is_required_set()
            && arg.get_default_values().is_empty()
            && !help.contains("[default: ")
            && !without_default.contains(&name.as_str())
        {
            missing.push(name);
        }
    }
    for sub in command.get_subcommands() {
        let path = format!("{path} {}", sub.get_name());
        walk(sub, &path, without_default, missing);
    }
}
