//! `ssl-engine config` without a recipe: every key of a recipe with its default value and one
//! line of help. The help is each field's doc comment, read through the JSON schema that
//! schemars derives from the same structs serde reads the recipe with, and the defaults are
//! `Config::default()` and each method's own defaults: a new key documents itself here.

use serde_json::Value;

use super::{Config, get_dotted};
use crate::ssl;

/// The whole reference, as a TOML file a user could start a recipe from: each key with its
/// default (`# key = (unset)` where the default is none) and its help as a comment.
pub fn reference() -> String {
    let mut out = String::from(
        "# Every recipe key: its default, and what it does. A recipe (configs/*.toml) sets only what it\n\
         # changes; `--set key=value` overrides one key; `ssl-engine config --config X [--set ...]` prints\n\
         # the recipe a run would use, and `--checkpoint F` the one stored in a checkpoint.\n",
    );
    let root = schemars::schema_for!(Config);
    let defaults = Config::default().to_table();
    let mut sections = Vec::new();
    write_table(&mut out, &mut sections, root.as_value(), root.as_value(), &defaults, "");
    while !sections.is_empty() {
        let (prefix, schema) = sections.remove(0);
        out.push_str(&format!("\n[{prefix}]\n"));
        write_table(&mut out, &mut sections, root.as_value(), &schema, &defaults, &prefix);
    }
    for m in ssl::methods() {
        let schema = (m.schema)();
        let table = (m.settings)(&toml::Table::new()).unwrap_or_default();
        let defaults = toml::Table::from_iter([(m.name.to_string(), toml::Value::Table(table))]);
        out.push_str(&format!("\n# method = \"{}\": {}\n[{}]\n", m.name, m.about, m.name));
        let mut nested = Vec::new();
        write_table(&mut out, &mut nested, schema.as_value(), schema.as_value(), &defaults, m.name);
        while !nested.is_empty() {
            let (prefix, sub) = nested.remove(0);
            out.push_str(&format!("\n[{prefix}]\n"));
            write_table(&mut out, &mut nested, schema.as_value(), &sub, &defaults, &prefix);
        }
    }
    out
}

/// The schema a `$ref` (or an `Option`'s `anyOf` / `allOf` around one) points to in `root`.
fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default();
        return root.get("$defs").and_then(|d| d.get(name)).unwrap_or(s);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(inner) = s.get(key).and_then(Value::as_array).and_then(|a| a.iter().find(|v| v.get("$ref").is_some())) {
            return resolve(root, inner);
        }
    }
    s
}

/// Writes the leaves of one table (`prefix`, "" for the top level) and queues its sub-tables.
fn write_table(out: &mut String, sections: &mut Vec<(String, Value)>, root: &Value, schema: &Value, defaults: &toml::Table, prefix: &str) {
    let target = resolve(root, schema);
    let Some(props) = target.get("properties").and_then(Value::as_object) else { return };
    for (name, prop) in props {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let inner = resolve(root, prop);
        if inner.get("properties").is_some() {
            sections.push((key, inner.clone()));
            continue;
        }
        let help = one_line(prop.get("description").or_else(|| inner.get("description")).and_then(Value::as_str).unwrap_or(""));
        let choices = choices(inner).map(|c| format!(" (one of {c})")).unwrap_or_default();
        let line = match get_dotted(defaults, &key) {
            Some(v) => format!("{name} = {v}"),
            None => format!("# {name} = (unset)"),
        };
        out.push_str(&format!("{line:<40} # {help}{choices}\n"));
    }
}

/// The values an enum setting takes, from its schema (`enum`, or `oneOf` of constants).
fn choices(s: &Value) -> Option<String> {
    let names: Vec<String> = match (s.get("enum"), s.get("oneOf")) {
        (Some(Value::Array(e)), _) => e.iter().filter_map(Value::as_str).map(|v| format!("\"{v}\"")).collect(),
        (_, Some(Value::Array(o))) => o.iter().filter_map(|v| v.get("const").and_then(Value::as_str)).map(|v| format!("\"{v}\"")).collect(),
        _ => return None,
    };
    (!names.is_empty()).then(|| names.join(", "))
}

/// A doc comment's first paragraph on one line, cut after its first sentence when long.
fn one_line(doc: &str) -> String {
    let para = doc.split("\n\n").next().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
    if para.len() <= 140 {
        return para;
    }
    match para.char_indices().skip(40).find(|&(i, c)| c == '.' && para[i + 1..].starts_with(' ')) {
        Some((i, _)) if i < 220 => para[..=i].to_string(),
        _ => para,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_key_is_listed_with_help() {
        let text = reference();
        let parsed: toml::Table = toml::from_str(&text).expect("the reference is TOML");
        // Every key `Config::default()` writes comes back with the same value.
        let defaults = Config::default().to_table();
        let mut keys = Vec::new();
        super::super::leaves(&defaults, "", &mut keys);
        for (k, v) in keys {
            assert_eq!(get_dotted(&parsed, &k), Some(&v), "{k}");
        }
        for line in text.lines().filter(|l| l.contains(" = ") && !l.starts_with("# method")) {
            let help = line.split_once(" # ").map(|(_, h)| h.trim()).unwrap_or("");
            assert!(!help.is_empty(), "no help for: {line}");
        }
        assert!(text.contains("[simclr]") && text.contains("temperature = "), "method tables are listed");
        assert!(text.contains("# max_steps = (unset)"), "a key without a default is shown unset");
    }
}
