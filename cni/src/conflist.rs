//! Editing the node's CNI configuration: the `lanyard-cni` entry added at the end of the
//! primary conflist's `plugins` (a single-plugin `.conf` becomes a conflist holding it), or
//! removed. The cluster's own entries and fields pass through byte for byte, in their order;
//! only the file's outer layout is rewritten. Text that is not a conflist (or conf) is refused
//! and left as it is.
//!
//! This file uses nothing of the crate but [`crate::spec::PLUGIN_TYPE`], so the fuzz target
//! compiles it with `spec.rs` alone.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::spec::PLUGIN_TYPE;

/// Why a file's text cannot be edited.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConflistError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("the key {0:?} appears twice")]
    DuplicateKey(String),
    #[error("a conflist needs a \"plugins\" array")]
    NoPlugins,
    #[error("plugin {0} of the list is not a JSON object")]
    PluginNotAnObject(usize),
    #[error("a single-plugin .conf needs a \"type\"")]
    NoType,
    #[error("the single plugin is lanyard-cni itself: there is no cluster plugin to chain after")]
    NoClusterPlugin,
}

/// The kind of file, by its name's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `*.conflist`: a `plugins` list.
    List,
    /// `*.conf`: one plugin's configuration.
    Single,
}

impl Kind {
    /// The kind of a file named `name`, if it is a CNI configuration (hidden files are not).
    pub fn of(name: &str) -> Option<Kind> {
        if name.starts_with('.') {
            None
        } else if name.ends_with(".conflist") {
            Some(Kind::List)
        } else if name.ends_with(".conf") {
            Some(Kind::Single)
        } else {
            None
        }
    }
}

/// A JSON object's members in their order, values untouched.
#[derive(Debug)]
struct Object(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Object;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                let mut members: Vec<(String, Box<RawValue>)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    if members.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    members.push((key, value));
                }
                Ok(Object(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

impl Object {
    fn parse(text: &str) -> Result<Self, ConflistError> {
        // The raw values below skip over string contents; a full parse first refuses what a
        // strict reader would (a lone surrogate escape, say), so nothing is written that the
        // next reader cannot read back.
        if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
            return Err(ConflistError::NotJson(e.to_string()));
        }
        if !text.trim_start().starts_with('{') {
            return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Err(ConflistError::NotAnObject),
                Err(e) => Err(ConflistError::NotJson(e.to_string())),
            };
        }
        serde_json::from_str(text).map_err(|e| {
            let message = e.to_string();
            match message.strip_prefix("duplicate key ") {
                Some(rest) => ConflistError::DuplicateKey(
                    rest.split('"').nth(1).unwrap_or_default().to_owned(),
                ),
                None => ConflistError::NotJson(message),
            }
        })
    }

    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }
}

/// A plugin entry's `type`, if it has a string one.
fn plugin_type(entry: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        plugin_type: Option<String>,
    }
    serde_json::from_str::<Typed>(entry)
        .ok()
        .and_then(|t| t.plugin_type)
}

fn is_ours(entry: &RawValue) -> bool {
    plugin_type(entry.get()).as_deref() == Some(PLUGIN_TYPE)
}

/// The plugin entries of a conflist's object.
fn plugins(object: &Object) -> Result<Vec<Box<RawValue>>, ConflistError> {
    let raw = object.get("plugins").ok_or(ConflistError::NoPlugins)?;
    let list: Vec<Box<RawValue>> =
        serde_json::from_str(raw.get()).map_err(|_| ConflistError::NoPlugins)?;
    for (i, entry) in list.iter().enumerate() {
        // An entry with a key twice would be read one way here and another by the runtime.
        match Object::parse(entry.get()) {
            Ok(_) => {}
            Err(ConflistError::DuplicateKey(key)) => return Err(ConflistError::DuplicateKey(key)),
            Err(_) => return Err(ConflistError::PluginNotAnObject(i)),
        }
    }
    Ok(list)
}

/// Writes `members` as a JSON object, one member a line, `plugins` one entry a line.
fn render(members: &[(String, String)]) -> String {
    let mut out = String::from("{\n");
    for (i, (key, value)) in members.iter().enumerate() {
        let key = serde_json::to_string(key).expect("a string serializes");
        out.push_str(&format!("  {key}: {value}"));
        out.push_str(if i + 1 < members.len() { ",\n" } else { "\n" });
    }
    out.push_str("}\n");
    out
}

fn render_plugins(list: &[&RawValue]) -> String {
    let entries: Vec<&str> = list.iter().map(|e| e.get()).collect();
    format!("[\n    {}\n  ]", entries.join(",\n    "))
}

/// What adding the entry to a file needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Edit {
    /// The file already ends its list with exactly this entry, once.
    Unchanged,
    /// Write this text (to a `.conflist`: for a `.conf`, under the same stem).
    Write(String),
}

/// Adds `entry` (a `lanyard-cni` plugin object) at the end of the list of the file `kind`
/// whose text is `text`, dropping any other `lanyard-cni` entry.
pub fn with_entry(kind: Kind, text: &str, entry: &RawValue) -> Result<Edit, ConflistError> {
    let object = Object::parse(text)?;
    match kind {
        Kind::List => {
            let list = plugins(&object)?;
            let wanted: serde_json::Value =
                serde_json::from_str(entry.get()).expect("the entry is JSON");
            let ours: Vec<&Box<RawValue>> = list.iter().filter(|e| is_ours(e)).collect();
            let already = ours.len() == 1
                && list.last().is_some_and(|last| is_ours(last))
                && serde_json::from_str::<serde_json::Value>(ours[0].get()).ok() == Some(wanted);
            if already {
                return Ok(Edit::Unchanged);
            }
            let mut kept: Vec<&RawValue> = list
                .iter()
                .filter(|e| !is_ours(e))
                .map(|e| e.as_ref())
                .collect();
            kept.push(entry);
            Ok(Edit::Write(replace_plugins(&object, &kept)))
        }
        Kind::Single => {
            match plugin_type(text).as_deref() {
                None => return Err(ConflistError::NoType),
                Some(PLUGIN_TYPE) => return Err(ConflistError::NoClusterPlugin),
                Some(_) => {}
            }
            let plugin = RawValue::from_string(text.trim().to_owned())
                .map_err(|e| ConflistError::NotJson(e.to_string()))?;
            let mut members = Vec::new();
            for key in ["cniVersion", "name"] {
                if let Some(value) = object.get(key) {
                    members.push((key.to_owned(), value.get().to_owned()));
                }
            }
            members.push((
                "plugins".to_owned(),
                render_plugins(&[plugin.as_ref(), entry]),
            ));
            Ok(Edit::Write(render(&members)))
        }
    }
}

/// `object` with its `plugins` replaced by `list`, every other member as it was.
fn replace_plugins(object: &Object, list: &[&RawValue]) -> String {
    let members: Vec<(String, String)> = object
        .0
        .iter()
        .map(|(key, value)| {
            let value = if key == "plugins" {
                render_plugins(list)
            } else {
                value.get().to_owned()
            };
            (key.clone(), value)
        })
        .collect();
    render(&members)
}

/// The conflist `text` without its `lanyard-cni` entries; `None` when it has none (or is not
/// a conflist: nothing of ours can be in it).
pub fn without_entry(text: &str) -> Option<String> {
    let object = Object::parse(text).ok()?;
    let list = plugins(&object).ok()?;
    if !list.iter().any(|e| is_ours(e)) {
        return None;
    }
    let kept: Vec<&RawValue> = list
        .iter()
        .filter(|e| !is_ours(e))
        .map(|e| e.as_ref())
        .collect();
    Some(replace_plugins(&object, &kept))
}

/// Whether the conflist `text` ends its plugins with a `lanyard-cni` entry.
pub fn has_entry(text: &str) -> bool {
    Object::parse(text)
        .ok()
        .and_then(|o| plugins(&o).ok())
        .is_some_and(|list| list.last().is_some_and(|e| is_ours(e)))
}

/// The `lanyard-cni` entry: `{"type", "kubeconfig", "log_level"}`.
pub fn entry(kubeconfig: &str, log_level: &str) -> Box<RawValue> {
    let text = format!(
        r#"{{"type": {}, "kubeconfig": {}, "log_level": {}}}"#,
        serde_json::to_string(PLUGIN_TYPE).expect("a string serializes"),
        serde_json::to_string(kubeconfig).expect("a string serializes"),
        serde_json::to_string(log_level).expect("a string serializes"),
    );
    RawValue::from_string(text).expect("the entry is JSON")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "1.0.0",
  "plugins": [
    {"type": "calico", "ipam": {"type": "calico-ipam"}, "log_level": "info"},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ],
  "disableCheck": false
}"#;

    fn ours() -> Box<RawValue> {
        entry("/etc/cni/net.d/lanyard-cni.d/kubeconfig", "info")
    }

    fn written(edit: Edit) -> String {
        match edit {
            Edit::Write(text) => text,
            Edit::Unchanged => panic!("unchanged"),
        }
    }

    #[test]
    fn the_entry_goes_last_and_everything_else_stays() {
        let text = written(with_entry(Kind::List, CALICO, &ours()).unwrap());
        let value: Value = serde_json::from_str(&text).unwrap();
        let mut expected: Value = serde_json::from_str(CALICO).unwrap();
        expected["plugins"].as_array_mut().unwrap().push(json!({
            "type": "lanyard-cni",
            "kubeconfig": "/etc/cni/net.d/lanyard-cni.d/kubeconfig",
            "log_level": "info"
        }));
        assert_eq!(value, expected);
        // The cluster's members keep their order and their entries their bytes.
        let keys: Vec<usize> = [
            "\"name\"",
            "\"cniVersion\"",
            "\"plugins\"",
            "\"disableCheck\"",
        ]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.contains(
            r#"{"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}"#
        ));
        assert!(has_entry(&text));
        assert!(!has_entry(CALICO));

        // Again: nothing to do. Removing: the original plugins, nothing of ours.
        assert_eq!(
            with_entry(Kind::List, &text, &ours()).unwrap(),
            Edit::Unchanged
        );
        let removed = without_entry(&text).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&removed).unwrap(),
            serde_json::from_str::<Value>(CALICO).unwrap()
        );
        assert_eq!(without_entry(&removed), None);
    }

    #[test]
    fn a_stale_or_misplaced_entry_is_replaced_once() {
        let stale = CALICO.replace(
            r#"{"type": "calico","#,
            r#"{"type": "lanyard-cni", "kubeconfig": "/old", "log_level": "debug"},
    {"type": "calico","#,
        );
        let text = written(with_entry(Kind::List, &stale, &ours()).unwrap());
        let value: Value = serde_json::from_str(&text).unwrap();
        let types: Vec<&str> = value["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["calico", "portmap", "lanyard-cni"]);
        assert_eq!(
            value["plugins"][2]["kubeconfig"],
            "/etc/cni/net.d/lanyard-cni.d/kubeconfig"
        );
        // Another log level is another entry.
        let debug = entry("/etc/cni/net.d/lanyard-cni.d/kubeconfig", "debug");
        assert!(matches!(
            with_entry(Kind::List, &text, &debug).unwrap(),
            Edit::Write(_)
        ));
    }

    #[test]
    fn a_single_conf_becomes_a_conflist_holding_it() {
        let conf = r#"{"cniVersion": "0.4.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}"#;
        let text = written(with_entry(Kind::Single, conf, &ours()).unwrap());
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["cniVersion"], "0.4.0");
        assert_eq!(value["name"], "bridge-net");
        assert_eq!(
            value["plugins"][0],
            serde_json::from_str::<Value>(conf).unwrap()
        );
        assert_eq!(value["plugins"][1]["type"], "lanyard-cni");
        assert!(text.contains(conf), "the plugin's bytes are kept: {text}");
        assert_eq!(
            with_entry(Kind::List, &text, &ours()).unwrap(),
            Edit::Unchanged
        );
        assert_eq!(
            with_entry(Kind::Single, r#"{"name":"x"}"#, &ours()).unwrap_err(),
            ConflistError::NoType
        );
        assert_eq!(
            with_entry(Kind::Single, r#"{"type":"lanyard-cni"}"#, &ours()).unwrap_err(),
            ConflistError::NoClusterPlugin
        );
    }

    #[test]
    fn what_is_not_a_conflist_is_refused() {
        type Expect = fn(&ConflistError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("", |e| matches!(e, ConflistError::NotJson(_))),
            ("{", |e| matches!(e, ConflistError::NotJson(_))),
            ("[]", |e| *e == ConflistError::NotAnObject),
            ("\"x\"", |e| *e == ConflistError::NotAnObject),
            ("{}", |e| *e == ConflistError::NoPlugins),
            (r#"{"plugins": 3}"#, |e| *e == ConflistError::NoPlugins),
            (r#"{"plugins": [{"type": "\uDAEE"}]}"#, |e| {
                matches!(e, ConflistError::NotJson(_))
            }),
            (r#"{"plugins": [1]}"#, |e| {
                *e == ConflistError::PluginNotAnObject(0)
            }),
            (r#"{"plugins": [], "plugins": []}"#, |e| {
                *e == ConflistError::DuplicateKey("plugins".into())
            }),
            (
                r#"{"plugins": [{"type": "ptp", "type": "lanyard-cni"}]}"#,
                |e| *e == ConflistError::DuplicateKey("type".into()),
            ),
        ];
        for (text, expected) in cases {
            let err = with_entry(Kind::List, text, &ours()).unwrap_err();
            assert!(expected(&err), "{text}: {err:?}");
            assert_eq!(without_entry(text), None);
        }
    }

    #[test]
    fn kinds_by_name() {
        assert_eq!(Kind::of("10-calico.conflist"), Some(Kind::List));
        assert_eq!(Kind::of("10-bridge.conf"), Some(Kind::Single));
        assert_eq!(Kind::of(".lanyard-cni.tmp.conflist"), None);
        assert_eq!(Kind::of("lanyard-cni.d"), None);
        assert_eq!(Kind::of("99-loopback.json"), None);
    }
}
