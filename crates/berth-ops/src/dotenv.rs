//! `.env` files as Compose and most tools read them: `KEY=value`, `export KEY=value`,
//! comments, single quotes (literal), double quotes (with `\n`, `\"`, `\\` escapes and
//! multi-line values), and `# comments` after unquoted values.

/// One variable of a `.env` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
    /// Whether `${VAR}` in the value is expanded: not in single quotes, as Compose reads it.
    pub expands: bool,
}

/// A line that is not an assignment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct DotenvError {
    pub line: usize,
    pub reason: String,
}

pub fn parse(text: &str) -> Result<Vec<Entry>, DotenvError> {
    let mut entries = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, raw)) = lines.next() {
        let line = index + 1;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let assignment = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        let Some((key, rest)) = assignment.split_once('=') else {
            return Err(DotenvError {
                line,
                // The line itself is not repeated: it may hold a secret.
                reason: "is not KEY=value (a variable, `=`, its value)".into(),
            });
        };
        let key = key.trim();
        if !valid_key(key) {
            return Err(DotenvError {
                line,
                reason: "does not start with a variable name (letters, digits, underscores, dots and dashes)".into(),
            });
        }
        let rest = rest.trim_start();
        let expands = !rest.starts_with('\'');
        let quoted = rest
            .strip_prefix('\'')
            .map(|body| (body, '\''))
            .or_else(|| rest.strip_prefix('"').map(|body| (body, '"')));
        let value = if let Some((body, quote)) = quoted {
            // A quoted value may go on over the next lines until its quote closes.
            let close = |text: &str| match quote {
                '\'' => text.split_once('\'').map(|(value, _)| value.to_owned()),
                _ => closed_double_quoted(text),
            };
            let mut text = body.to_owned();
            loop {
                if let Some(value) = close(&text) {
                    break value;
                }
                match lines.next() {
                    Some((_, more)) => {
                        text.push('\n');
                        text.push_str(more);
                    }
                    None => {
                        let kind = if quote == '"' { "double" } else { "single" };
                        return Err(DotenvError {
                            line,
                            reason: format!("the {kind} quote of {key} is not closed"),
                        });
                    }
                }
            }
        } else {
            let value = match rest.find(" #") {
                Some(at) => &rest[..at],
                None => rest,
            };
            value.trim_end().to_owned()
        };
        entries.retain(|e: &Entry| e.key != key);
        entries.push(Entry {
            key: key.to_owned(),
            value,
            line,
            expands,
        });
    }
    Ok(entries)
}

/// The entries with `${VAR}` expanded as Compose does: from the file's earlier variables, else
/// from `environment` (the shell's). A variable set nowhere becomes empty, as in Compose.
pub fn expanded(
    entries: Vec<Entry>,
    environment: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<Entry>, DotenvError> {
    let mut known = environment.clone();
    let mut out = Vec::with_capacity(entries.len());
    for mut entry in entries {
        if entry.expands && entry.value.contains('$') {
            entry.value = crate::interpolate::interpolate(&entry.value, &known)
                .map_err(|reason| DotenvError {
                    line: entry.line,
                    reason,
                })?
                .text;
        }
        known.insert(entry.key.clone(), entry.value.clone());
        out.push(entry);
    }
    Ok(out)
}

/// The value up to the closing quote with escapes applied, or `None` if not closed yet.
fn closed_double_quoted(text: &str) -> Option<String> {
    let mut value = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => match chars.next() {
                Some('n') => value.push('\n'),
                Some('t') => value.push('\t'),
                Some('r') => value.push('\r'),
                Some(other) => value.push(other),
                None => return None,
            },
            c => value.push(c),
        }
    }
    None
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_people_write() {
        let text = "# settings\nPLAIN=value\nexport EXPORTED=yes\nSPACED = padded  # note\nSINGLE='a $b # c'\nDOUBLE=\"line\\none\"\nMULTI=\"first\nsecond\"\nEMPTY=\nPLAIN=again\n";
        let entries = parse(text).unwrap();
        let get = |k: &str| entries.iter().find(|e| e.key == k).unwrap().value.clone();
        assert_eq!(get("PLAIN"), "again");
        assert_eq!(get("EXPORTED"), "yes");
        assert_eq!(get("SPACED"), "padded");
        assert_eq!(get("SINGLE"), "a $b # c");
        assert_eq!(get("DOUBLE"), "line\none");
        assert_eq!(get("MULTI"), "first\nsecond");
        assert_eq!(get("EMPTY"), "");
        assert_eq!(entries.len(), 7);
    }

    #[test]
    fn values_expand_like_compose_reads_them() {
        let entries = parse("USER=app\nPASS='p$w'\nURL=postgres://${USER}:${PASS}@db/${DB:-main}\nLIT='${USER}'\nHOME_DIR=\"$HOME/x\"\n").unwrap();
        let env = [("HOME".to_owned(), "/home/me".to_owned())]
            .into_iter()
            .collect();
        let out = expanded(entries, &env).unwrap();
        let get = |k: &str| out.iter().find(|e| e.key == k).unwrap().value.clone();
        assert_eq!(get("URL"), "postgres://app:p$w@db/main");
        assert_eq!(get("LIT"), "${USER}");
        assert_eq!(get("HOME_DIR"), "/home/me/x");
    }

    #[test]
    fn broken_lines_are_named() {
        assert_eq!(parse("A=1\njust words\n").unwrap_err().line, 2);
        assert_eq!(parse("1A=x\n").unwrap_err().line, 1);
        assert!(parse("A=\"open\n").is_err());
    }
}
