//! Manifest diagnostics: what is wrong, where (file:line:column), and how to fix it.

use serde::Serialize;
use std::fmt;
use std::ops::Range;

/// One problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// What is wrong, in one sentence.
    pub message: String,
    /// Byte range in the manifest text the problem is about, when one is known.
    pub span: Option<Range<usize>>,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Self {
            message: message.into(),
            span,
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Every problem found in one manifest, with the text needed to point at them.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ManifestError {
    file: String,
    text: String,
    diagnostics: Vec<Diagnostic>,
}

/// A diagnostic resolved to a position, for `--json` output and tests.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LocatedDiagnostic {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub help: Option<String>,
}

impl ManifestError {
    pub(crate) fn new(file: &str, text: &str, diagnostics: Vec<Diagnostic>) -> Self {
        Self {
            file: file.to_owned(),
            text: text.to_owned(),
            diagnostics,
        }
    }

    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// Each diagnostic with its 1-based line and column.
    pub fn located(&self) -> Vec<LocatedDiagnostic> {
        self.diagnostics
            .iter()
            .map(|d| {
                let position = d.span.as_ref().map(|s| line_column(&self.text, s.start));
                LocatedDiagnostic {
                    file: self.file.clone(),
                    line: position.map(|p| p.0),
                    column: position.map(|p| p.1),
                    message: d.message.clone(),
                    help: d.help.clone(),
                }
            })
            .collect()
    }
}

impl fmt::Display for ManifestError {
    /// Renders like a compiler: `error: FILE:LINE:COL: message`, the offending line with a
    /// caret under the span, then `help: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.diagnostics.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            match &diagnostic.span {
                Some(span) => {
                    let (line, column) = line_column(&self.text, span.start);
                    writeln!(
                        f,
                        "error: {}:{line}:{column}: {}",
                        self.file, diagnostic.message
                    )?;
                    let source_line = self.text.lines().nth(line - 1).unwrap_or("");
                    let gutter = line.to_string().len();
                    let width = span_width(source_line, column, span);
                    writeln!(f, "{:gutter$} |", "")?;
                    writeln!(f, "{line} | {source_line}")?;
                    writeln!(
                        f,
                        "{:gutter$} | {}{}",
                        "",
                        " ".repeat(column - 1),
                        "^".repeat(width)
                    )?;
                }
                None => writeln!(f, "error: {}: {}", self.file, diagnostic.message)?,
            }
            if let Some(help) = &diagnostic.help {
                writeln!(f, "  help: {help}")?;
            }
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before
        .get(line_start..)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// How many carets to draw: the span's width, clipped to the end of its first line.
fn span_width(source_line: &str, column: usize, span: &Range<usize>) -> usize {
    let remaining = source_line.chars().count().saturating_sub(column - 1);
    span.len().clamp(1, remaining.max(1))
}

/// The closest candidate to `input`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(input, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(input.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance where inserting, deleting, substituting or swapping two neighbours costs 1
/// (optimal string alignment): typos like `prot` for `port` are one edit away.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 9), (2, 4));
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(did_you_mean("prot", ["port", "image"]), Some("port"));
        assert_eq!(
            did_you_mean("helthcheck", ["healthcheck", "env"]),
            Some("healthcheck")
        );
        assert_eq!(did_you_mean("zzz", ["port", "image"]), None);
    }

    #[test]
    fn rendering_points_at_the_span() {
        let text = "app = \"x\"\nprot = 8000\n";
        let error = ManifestError::new(
            "berth.toml",
            text,
            vec![
                Diagnostic::new("unknown key `prot`", Some(10..14))
                    .with_help("did you mean `port`?"),
            ],
        );
        let rendered = error.to_string();
        assert!(
            rendered.starts_with("error: berth.toml:2:1: unknown key `prot`\n"),
            "{rendered}"
        );
        assert!(
            rendered.contains("2 | prot = 8000\n  | ^^^^\n"),
            "{rendered}"
        );
        assert!(
            rendered.contains("help: did you mean `port`?"),
            "{rendered}"
        );
    }
}
