//! Compose's variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}` and `$$` for a dollar sign.

use std::collections::BTreeMap;

/// One `$…` reference found in a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
}

/// The result of interpolating one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpolated {
    pub text: String,
    /// Every variable the value named, in order.
    pub references: Vec<Reference>,
    /// Variables that had no value and no default (they became empty, as in Compose).
    pub missing: Vec<String>,
}

/// Interpolates `text` with `vars` (the project's `.env`).
pub fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> Result<Interpolated, String> {
    let mut out = String::with_capacity(text.len());
    let mut references = Vec::new();
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end =
                matching_brace(braced).ok_or_else(|| format!("`${{` is not closed in `{text}`"))?;
            let inner = &braced[..end];
            let (name, op, word) = split_expression(inner);
            if !berth_manifest::valid_env_name(name) {
                return Err(format!("`${{{inner}}}` does not name a variable"));
            }
            references.push(Reference {
                name: name.to_owned(),
            });
            let value = vars.get(name);
            let set = value.is_some();
            let non_empty = value.is_some_and(|v| !v.is_empty());
            let nested = |word: &str, refs: &mut Vec<Reference>, missing: &mut Vec<String>| {
                interpolate(word, vars).map(|i| {
                    refs.extend(i.references);
                    missing.extend(i.missing);
                    i.text
                })
            };
            let replaced = match op {
                "" => {
                    if !set {
                        missing.push(name.to_owned());
                    }
                    value.cloned().unwrap_or_default()
                }
                ":-" if non_empty => value.cloned().unwrap_or_default(),
                "-" if set => value.cloned().unwrap_or_default(),
                ":-" | "-" => nested(word, &mut references, &mut missing)?,
                ":?" | "?" => {
                    let ok = if op == ":?" { non_empty } else { set };
                    if !ok {
                        let message = if word.is_empty() {
                            format!("variable {name} must be set")
                        } else {
                            word.to_owned()
                        };
                        return Err(format!("${{{name}}}: {message}"));
                    }
                    value.cloned().unwrap_or_default()
                }
                ":+" if non_empty => nested(word, &mut references, &mut missing)?,
                "+" if set => nested(word, &mut references, &mut missing)?,
                _ => String::new(),
            };
            out.push_str(&replaced);
            rest = &braced[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..len];
            if berth_manifest::valid_env_name(name) {
                references.push(Reference {
                    name: name.to_owned(),
                });
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => missing.push(name.to_owned()),
                }
                rest = &after[len..];
            } else {
                // A lone `$` (such as in a price) stays.
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(Interpolated {
        text: out,
        references,
        missing,
    })
}

/// Whether a value is exactly one reference with no default: `${NAME}` or `$NAME`.
pub fn sole_reference(text: &str) -> Option<&str> {
    let name = text
        .strip_prefix("${")
        .and_then(|t| t.strip_suffix('}'))
        .or_else(|| text.strip_prefix('$'))?;
    berth_manifest::valid_env_name(name).then_some(name)
}

fn matching_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn split_expression(inner: &str) -> (&str, &str, &str) {
    let name_len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_len);
    for op in [":-", ":?", ":+", "-", "?", "+"] {
        if let Some(word) = rest.strip_prefix(op) {
            return (name, op, word);
        }
    }
    (name, rest, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("TAG", "1.2"), ("EMPTY", ""), ("PORT", "8000")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn text(s: &str) -> String {
        interpolate(s, &vars()).unwrap().text
    }

    #[test]
    fn the_forms_compose_documents() {
        assert_eq!(text("app:${TAG}"), "app:1.2");
        assert_eq!(text("app:$TAG"), "app:1.2");
        assert_eq!(text("${NOPE:-latest}"), "latest");
        assert_eq!(text("${EMPTY:-x}"), "x");
        assert_eq!(text("${EMPTY-x}"), "");
        assert_eq!(text("${TAG:+set}"), "set");
        assert_eq!(text("${NOPE:+set}"), "");
        assert_eq!(text("$$HOME costs $5"), "$HOME costs $5");
        assert_eq!(text("${NOPE:-${PORT}}"), "8000");
        assert!(
            interpolate("${NOPE:?set NOPE in .env}", &vars())
                .unwrap_err()
                .contains("set NOPE in .env")
        );
        let result = interpolate("a${MISSING}b", &vars()).unwrap();
        assert_eq!(result.text, "ab");
        assert_eq!(result.missing, ["MISSING"]);
        assert!(interpolate("${oops", &vars()).is_err());
    }

    #[test]
    fn a_sole_reference() {
        assert_eq!(sole_reference("${KEY}"), Some("KEY"));
        assert_eq!(sole_reference("$KEY"), Some("KEY"));
        assert_eq!(sole_reference("${KEY:-x}"), None);
        assert_eq!(sole_reference("x${KEY}"), None);
    }
}
